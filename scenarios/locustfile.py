"""chatprobe scenarios under Locust: `locust -f scenarios/locustfile.py --chatprobe-scenario NAME --host ws://…`.

The user, its options (`--chatprobe-*`) and the verdict at the end live in harness/locust_user.py.
"""
from harness.locust_user import ChatUser


class ScenarioUser(ChatUser):
    """Plays the scenario named by --chatprobe-scenario, every chat judged by chatprobe's rules."""
