"""The reconciling controller: desired state (specs) -> plan -> apply -> recorded state.

Lives here: planning, the per-kind handler registry, apply with persisted step progress, the
repository lock. The controller never imports torch, sklearn, bentoml or the Label Studio SDK; the
handlers reach those through the layers below (runners, algorithms, labeling, bento), lazily.
"""
