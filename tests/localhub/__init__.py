from tests.localhub.server import LocalHub, scan_repo, wait_until_up

__all__ = ["LocalHub", "scan_repo", "wait_until_up"]
