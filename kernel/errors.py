"""Errors a user can cause: the CLI prints them as one line, never a traceback."""


class TickbusError(Exception):
    """A problem the operator can fix (bad config, unknown plugin, endpoint in use...)."""


class ConfigError(TickbusError):
    """A config value is missing, mistyped or refers to something that does not exist.

    The message names the file and the dotted key, e.g.
    ``configs/x.toml: plugins.echo.lane: lane 'fast' does not exist (lanes: hot)``."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")
