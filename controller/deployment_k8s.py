"""A Deployment spec as Kubernetes manifests for its Bento image: Deployment + Service (+ a
HorizontalPodAutoscaler with ``autoscaling``). ``kiln render Deployment/NAME --what k8s``.

Why render and not apply: this machine has no cluster; the manifests are what a cluster (or a GitOps
tool such as Argo CD) applies. The image is ``<registry>/<bento name>:<model>-v<version>``, built by
``bentoml containerize`` of the Bento the ``build`` step makes, or ``spec.image`` when the spec names
one (the GitOps route: CI builds and pushes the image, the spec references it by address), pulled
with ``spec.imagePullSecrets``. Tokens never enter a manifest:
``auth.tokens[].secretName`` becomes a ``secretKeyRef``, ``env`` tokens a reference to the
Secret ``<name>-tokens`` the operator creates; the token store (hashes) is mounted from the Secret
``kiln-serving-tokens``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.controller.render import _label_value, _resources, _size

if TYPE_CHECKING:
    from kiln.api.workspace import WorkspaceSpec
    from kiln.config import KilnConfig
    from kiln.loader import LoadedSpec

PORT = 3000  # bentoml serve's default


def render_k8s(config: KilnConfig, s: LoadedSpec, *, workspace: WorkspaceSpec | None,
               model: str | None = None, version: int | None = None) -> list[dict[str, Any]]:

    spec = s.obj.spec
    model = model or spec.model.name or spec.model.experiment
    tag = f"{model}-v{version}" if version else (f"{model}-{spec.model.alias}" if spec.model.alias else
                                                 f"{model}-v{spec.model.version}" if spec.model.version else
                                                 f"{model}-latest")
    image = spec.image or (f"{config.image.rsplit('/', 1)[0]}/{s.name}:{tag}" if "/" in config.image
                           else f"{s.name}:{tag}")
    labels = {"app.kubernetes.io/name": _label_value(s.name), "app.kubernetes.io/managed-by": "kiln",
              "kiln.dev/workspace": _label_value(s.workspace), "kiln.dev/spec-hash": s.spec_hash}
    select = {"app.kubernetes.io/name": _label_value(s.name)}
    env: list[dict[str, Any]] = [{"name": "KILN_DEPLOYMENT", "value": s.name},
                                 {"name": "KILN_PUBLIC", "value": str(spec.auth.public).lower()},
                                 {"name": "BENTOML_CONFIG_OPTIONS",
                                  "value": f"api_server.workers={spec.workers}"}]
    for i, ref in enumerate(spec.auth.tokens):
        secret = ref.secretName or f"{s.name}-tokens"
        key = ref.key if ref.secretName else str(ref.env)
        env.append({"name": f"KILN_TOKEN_{i}", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    ns = s.workspace if s.workspace != "default" else "default"
    meta = {"name": s.name, "namespace": ns, "labels": labels}
    probe = {"httpGet": {"path": "/readyz", "port": PORT}, "periodSeconds": 5}
    container: dict[str, Any] = {
        "name": "bento", "image": image, "ports": [{"name": "http", "containerPort": PORT}],
        "env": env, "resources": _resources(_size(s, workspace)),
        "readinessProbe": probe, "livenessProbe": {"httpGet": {"path": "/livez", "port": PORT}, "periodSeconds": 10},
        "volumeMounts": [{"name": "tokens", "mountPath": "/home/bentoml/.kiln/serving", "readOnly": True}],
    }
    pod: dict[str, Any] = {"containers": [container],
                           "volumes": [{"name": "tokens", "secret": {
                               "secretName": "kiln-serving-tokens", "optional": spec.auth.public}}]}
    if spec.imagePullSecrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.imagePullSecrets]
    replicas = 0 if not spec.enabled else (spec.autoscaling.minReplicas if spec.autoscaling else spec.replicas)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": replicas, "selector": {"matchLabels": select},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": {**select, "kiln.dev/spec-hash": s.spec_hash}},
                               "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": select, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]
    if spec.autoscaling and spec.enabled:
        a = spec.autoscaling
        docs.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                     "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
                              "minReplicas": a.minReplicas, "maxReplicas": a.maxReplicas,
                              "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                                  "type": "Utilization", "averageUtilization": a.targetCPUUtilization}}}]}})
    return docs
