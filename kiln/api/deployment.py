"""Deployment: a model version behind an HTTP API (BentoML), with tokens, batching, limits and
capture of inputs for relabelling and retraining."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kiln.api.common import Description, ImageRef, Metadata, Model, ModelRef, Name, ResourceRequest, SecretRef


class Autoscaling(Model):
    minReplicas: int = Field(1, ge=1)
    maxReplicas: int = Field(..., ge=1)
    targetCPUUtilization: int = Field(70, ge=1, le=100)

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.maxReplicas < self.minReplicas:
            raise ValueError("maxReplicas < minReplicas")
        return self


class Batching(Model):
    enabled: bool = True
    maxBatchSize: int = Field(32, ge=1)
    maxLatencyMs: int = Field(10, ge=1)


class Auth(Model):
    """Tokens are created with `kiln deployments token create`; specs only reference them."""

    public: bool = Field(False, description="true: no token needed (the source platforms' 'public' access)")
    tokens: list[SecretRef] = Field(default_factory=list, description="extra tokens from env or secrets")

    @model_validator(mode="after")
    def _public(self) -> Auth:
        if self.public and self.tokens:
            raise ValueError("a public deployment takes no tokens")
        return self


class Capture(Model):
    """Store a sample of request inputs and predictions; a later apply versions them as a dataset."""

    sampleRate: float = Field(..., gt=0, le=1)
    maxPerDay: int = Field(1000, ge=1)
    dataset: Name = Field(..., description="the Dataset (source.capture: this deployment) that versions them")


class Limits(Model):
    maxPayloadBytes: int = Field(10 * 2**20, ge=1024)
    maxInstances: int = Field(64, ge=1)
    timeoutSeconds: float = Field(30, gt=0)
    maxImagePixels: int | None = Field(
        None, ge=1, description="largest image (width x height) a request may send, checked from the "
        "file's header before it is decoded; default: 16x the model's input, at least 4,000,000")


class Rollout(Model):
    """How a new model version replaces the served one on the local runtime (a router in front of
    both versions, kiln.bento.router) and on a cluster (kiln.controller.deployment_k8s)."""

    strategy: Literal["canary", "shadow"] = Field(
        ..., description="canary: the new version answers steps[i]% of requests, step by step; shadow: the old "
        "version answers every request, a copy goes to the new one and both outputs are recorded")
    steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100], min_length=1,
        description="canary: the new version's share of requests (percent) at each step, increasing, ending at 100; "
        "shadow: one check per entry (the values are not used)")
    interval: float = Field(60.0, gt=0, le=86400, description="seconds each step runs before its check")
    maxErrorRate: float = Field(0.01, ge=0, le=1, description="largest share of the new version's requests that "
                                "may fail (5xx or no answer) in a step; above it the rollout rolls back")
    maxLatencyP99: float | None = Field(None, gt=0, description="largest p99 latency of the new version in a "
                                        "step, in milliseconds; above it the rollout rolls back")
    minRequests: int = Field(1, ge=0, description="a step with fewer requests to the new version waits another "
                             "interval (at most 10) instead of judging on too little traffic")

    @model_validator(mode="after")
    def _steps(self) -> Rollout:
        if any(not 0 < s <= 100 for s in self.steps):
            raise ValueError(f"rollout.steps are percentages between 1 and 100, got {self.steps}")
        if self.strategy == "canary":
            if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
                raise ValueError(f"rollout.steps must increase, got {self.steps}")
            if self.steps[-1] != 100:
                raise ValueError(f"a canary's last step must be 100 (the new version takes all traffic), "
                                 f"got {self.steps}; add 100")
        return self


class DeploymentSpec(Model):
    model: ModelRef
    runtime: Literal["native", "onnx"] = "native"
    image: ImageRef | None = Field(None, description="cluster: serve from this image (e.g. one your CI builds with "
                                   "`bentoml containerize` on a CUDA base); default: the Bento image kiln names")
    imagePullSecrets: list[Name] = Field(default_factory=list, description="Secrets (by name) to pull the image")
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    replicas: int = Field(1, ge=0)
    autoscaling: Autoscaling | None = None
    workers: int = Field(1, ge=1)
    batching: Batching = Field(default_factory=Batching)
    auth: Auth = Field(default_factory=Auth)
    capture: Capture | None = None
    limits: Limits = Field(default_factory=Limits)
    rollout: Rollout | None = Field(None, description="canary or shadow rollout of a new model version "
                                    "(default: the new server replaces the old one once it is ready)")
    port: int | None = Field(None, ge=1024, le=65535, description="local runtime: fixed port (default: free one)")
    enabled: bool = Field(True, description="false keeps the spec but stops serving (Flightbase's switch)")
    owner: str | None = None
    # who may change it (kiln.controller.policy), as an Experiment's; serving access is `auth`
    access: Literal["public", "private"] = Field(
        "public", description="private: only the owner, `users` and workspace admins change or see it")
    users: list[str] = Field(default_factory=list, description="private: who besides the owner may change or see it")
    description: Description = None


class Deployment(Model):
    apiVersion: Literal["kiln.dev/v1alpha1"]
    kind: Literal["Deployment"]
    metadata: Metadata
    spec: DeploymentSpec
