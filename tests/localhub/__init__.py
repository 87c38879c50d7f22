from tests.localhub.server import Fault, LocalHub, LoggedRequest, scan_repo

__all__ = ["Fault", "LocalHub", "LoggedRequest", "scan_repo"]
