"""The one exception type the entrypoint turns into a clear message and exit status 2."""


class ConfigError(Exception):
    """Bad configuration. Each message names the variable and says how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
