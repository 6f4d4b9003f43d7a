"""One small exception tree. Every message is a single line that says what is
wrong and what to do; the CLI and the MCP server print it as it is."""

from __future__ import annotations

# Exit codes, documented in README.md ("Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (or diff found differences)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_CONNECT = 3  # could not reach or trust a server, or a transfer stalled (lost it)
EXIT_VERIFY = 4  # checksums differ after a transfer
EXIT_TIMEOUT = 124  # exec --timeout expired (same code as coreutils timeout)
EXIT_INTERRUPTED = 130


class ModelSyncError(Exception):
    """Root of every error model-sync reports to a user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ModelSyncError):
    exit_code = EXIT_USAGE


class ConfigError(ModelSyncError):
    """A problem in the configuration file; the message names the file."""

    exit_code = EXIT_USAGE

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class UnknownServerError(UsageError):
    def __init__(self, alias: str, known: list[str]):
        import difflib

        names = ", ".join(sorted(known)) or "none"
        close = difflib.get_close_matches(alias, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        super().__init__(
            f"unknown server '{alias}'{hint}; configured servers: {names} "
            "(add it under 'servers:' in the config, or run 'model-sync servers')"
        )
        self.alias = alias


class ConnectError(ModelSyncError):
    """The server could not be reached, authenticated or trusted."""

    exit_code = EXIT_CONNECT

    def __init__(self, alias: str, message: str):
        super().__init__(f"{alias}: {message}")
        self.alias = alias


class HostKeyError(ConnectError):
    pass


class TransferStalled(ConnectError):
    """No data moved for io_timeout seconds (a dead network, a stuck peer):
    the same words and exit code whichever way the files went (rsync or tar)."""

    def __init__(self, alias: str, io_timeout: int):
        super().__init__(alias, f"transfer stalled: no progress for {io_timeout}s (io_timeout); nothing "
                                "was published. Check the network and the server, then run the same command "
                                "again to resume")
        self.io_timeout = io_timeout


class RemoteError(ModelSyncError):
    """A command on a server failed; carries what it printed."""

    def __init__(self, alias: str, message: str, exit_code: int | None = None, stderr: str = ""):
        super().__init__(f"{alias}: {message}")
        self.alias = alias
        self.remote_exit = exit_code
        self.stderr = stderr


class CommandTimeout(ModelSyncError):
    exit_code = EXIT_TIMEOUT


class VerificationError(ModelSyncError):
    exit_code = EXIT_VERIFY


class TransferCancelled(ModelSyncError):
    """A transfer stopped by its caller's cancel (an MCP call abandoned)."""

    def __init__(self, alias: str, when: str):
        super().__init__(f"{alias}: cancelled {when}; nothing was published, and running the same "
                         "transfer again resumes")
