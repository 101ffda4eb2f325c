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

With ``rollout`` the new version runs beside the served one, as on the local runtime
(kiln.controller.deployment_rollout): a ``canary`` is two Deployments, ``NAME`` (track
``stable``, the served version) and ``NAME-canary`` (the new one), behind the one Service, their
replicas in proportion to the first step's weight (a Service balances per pod, so the share is
canary / (stable + canary) pods: ``kiln.dev/canary-share`` says which share that is). A
``shadow`` Deployment ``NAME-shadow`` is outside the Service's selector, with a Service of its
own: mirroring requests to it needs a mesh or ingress (Istio's ``mirror``), noted in its
annotations. Further steps and their checks need a controller on the cluster (Argo Rollouts or
Flagger); the steps, interval and bounds are in the annotations for it. The served version's
image is ``<model>-v<N>`` when kiln knows it (``stable_version``), else the ``<model>-stable``
tag the operator keeps on it.
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
               model: str | None = None, version: int | None = None,
               stable_version: int | None = None) -> list[dict[str, Any]]:

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
    def deployment(name: str, track: str | None, image: str, replicas: int,
                   notes: dict[str, str] | None = None) -> dict[str, Any]:
        pods = {**select, **({"kiln.dev/track": track} if track else {})}
        md: dict[str, Any] = {**meta, "name": name, "labels": {**labels, **pods}}
        if notes:
            md["annotations"] = notes
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": md,
                "spec": {"replicas": replicas, "selector": {"matchLabels": pods},
                         "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                         "template": {"metadata": {"labels": {**pods, "kiln.dev/spec-hash": s.spec_hash}},
                                      "spec": {**pod, "containers": [{**container, "image": image}]}}}}

    def service(name: str, selector: dict[str, str], notes: dict[str, str] | None = None) -> dict[str, Any]:
        md: dict[str, Any] = {**meta, "name": name, **({"annotations": notes} if notes else {})}
        return {"apiVersion": "v1", "kind": "Service", "metadata": md,
                "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}

    r = spec.rollout
    if r is None:
        docs: list[dict[str, Any]] = [deployment(s.name, None, image, replicas), service(s.name, select)]
    else:
        stable_tag = f"{model}-v{stable_version}" if stable_version else f"{model}-stable"
        # a spec's own image (spec.image) is the same for both tracks: kiln cannot know the old one
        stable_image = spec.image or image.rsplit(":", 1)[0] + ":" + stable_tag
        plan = {"kiln.dev/rollout-strategy": r.strategy, "kiln.dev/rollout-steps": ",".join(map(str, r.steps)),
                "kiln.dev/rollout-interval-seconds": f"{r.interval:g}",
                "kiln.dev/rollout-max-error-rate": f"{r.maxErrorRate:g}",
                **({"kiln.dev/rollout-max-latency-p99-ms": f"{r.maxLatencyP99:g}"} if r.maxLatencyP99 else {})}
        stable = deployment(s.name, "stable", stable_image, replicas)
        if r.strategy == "canary":
            w = r.steps[0]
            # canary / (stable + canary) pods = w%: the Service balances per pod
            n = 0 if not replicas else replicas if w >= 100 else max(1, round(replicas * w / (100 - w)))
            share = f"{100 * n / (replicas + n):.0f}%" if replicas + n else "0%"
            docs = [stable, deployment(f"{s.name}-canary", "canary", image, n,
                                       {**plan, "kiln.dev/canary-share": share}), service(s.name, select)]
        else:
            mirror = ("mirror requests to Service " + f"{s.name}-shadow with a mesh or ingress (Istio VirtualService "
                      "mirror); answers come from the stable pods only")
            docs = [stable, deployment(f"{s.name}-shadow", "shadow", image, min(replicas, 1), plan),
                    service(s.name, {**select, "kiln.dev/track": "stable"}, {"kiln.dev/shadow": mirror}),
                    service(f"{s.name}-shadow", {**select, "kiln.dev/track": "shadow"})]
    if spec.autoscaling and spec.enabled:
        a = spec.autoscaling
        docs.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                     "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
                              "minReplicas": a.minReplicas, "maxReplicas": a.maxReplicas,
                              "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                                  "type": "Utilization", "averageUtilization": a.targetCPUUtilization}}}]}})
    return docs
