"""Deploy and roll back on RunPod, always by digest: pods, load-balancing and queue endpoints,
templates (see rollout.py), behind the release gates (gates.py), through one client (runpod.py).

What rollback needs comes from RunPod (the image a target runs now) and the registry (the
production history, see builder/promote.py), so it works from a fresh CI runner with no ledger.
"""

from builder.deploy.gates import Release, enforce, problems
from builder.deploy.rollout import DeployResult, Plan, Target, deploy, digest_of, rollback_image
from builder.deploy.runpod import RunPod

__all__ = ["DeployResult", "Plan", "Release", "RunPod", "Target", "deploy", "digest_of", "enforce", "problems",
           "rollback_image"]
