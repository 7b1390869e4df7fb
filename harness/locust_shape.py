"""The scenario's stages as Locust's LoadTestShape, so one scenario file means the same load under Locust as under
`chatprobe run`: a locustfile that imports `ScenarioShape` (scenarios/locustfile.py does) ramps the users as the
stages say; a scenario without stages keeps Locust's own -u, -r and --run-time."""
from __future__ import annotations

from locust import LoadTestShape

from .locust_user import current


class ScenarioShape(LoadTestShape):
    """Users over time from the --chatprobe-scenario's `stages` (Shape.tick: linear ramps at the stage's spawn rate,
    a step at once), stopping after the last stage; -u, -r and --run-time when the scenario has none."""

    use_common_options = True  # Locust hands us -u/-r/--run-time instead of ignoring them

    def tick(self) -> tuple[int, float] | None:
        run = current()
        shape = run.scenario.shape() if run.scenario is not None else None
        t = self.get_run_time()
        if shape is None:
            opts = self.runner.environment.parsed_options if self.runner is not None else None
            users = getattr(opts, "num_users", None) or 1
            rate = getattr(opts, "spawn_rate", None) or 1.0
            run_time = getattr(opts, "run_time", None)
            return None if run_time and t > run_time else (int(users), float(rate))
        return shape.tick(t)
