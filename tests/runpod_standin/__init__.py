from tests.runpod_standin.server import RunPodStandIn

__all__ = ["RunPodStandIn"]
