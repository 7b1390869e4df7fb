"""chatprobe scenarios under Locust: `locust -f scenarios/locustfile.py --chatprobe-scenario NAME --host ws://…`.

The user, its options (`--chatprobe-*`) and the verdict at the end live in harness/locust_user.py; the scenario's
stages drive the user count through harness/locust_shape.py (without stages, -u, -r and --run-time do).
Locust prints --help before it imports a locustfile: `locust -f scenarios/locustfile.py --chatprobe-help` lists the
chatprobe flags with Locust's own.
"""
from harness.locust_shape import ScenarioShape  # noqa: F401  (Locust finds the shape class here)
from harness.locust_user import ChatUser


class ScenarioUser(ChatUser):
    """Plays the scenario named by --chatprobe-scenario, every chat judged by chatprobe's rules."""
