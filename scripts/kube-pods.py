#!/usr/bin/env python3
"""Turns rendered manifests (`kubectl kustomize manifests/`) into what
`podman kube play` runs: each DaemonSet's pod template as a Pod, hostPath
directories moved under a scratch directory, the ConfigMap in a file of its
own for `--configmap`, and `env` from the downward API's spec.nodeName (which
podman 4.3 lacks) as the value it would have: this host's name. Nothing else
in the pod spec changes.

  kube-pods.py RENDERED OUT_DIR [--host-dir PATH=DIR ...] [--args CONTAINER=ARG,...]
               [--name SUFFIX]

Writes OUT_DIR/pods.yaml, OUT_DIR/configmap.yaml, and prints one line per
pod: `pod NAME CONTAINER...` (init containers excluded) and `grace NAME
SECONDS` (terminationGracePeriodSeconds, 30 when unset), one per exec
liveness probe: `probe POD-CONTAINER TIMEOUT_SECONDS COMMAND...`, then
`image REF` for each distinct image.
"""

import argparse
import copy
import socket
import sys

import yaml

# podman 4.3 races removing an init container that runs once ("failed to
# remove once init container"); run-always init containers avoid it.
INIT_TYPE = "io.podman.annotations.init.container.type"


def pod_of(ds, host_dirs, extra_args, suffix, node_name):
    template = copy.deepcopy(ds["spec"]["template"])
    meta = template.get("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations[INIT_TYPE] = "always"
    spec = template["spec"]
    for vol in spec.get("volumes", []):
        host = vol.get("hostPath")
        if host and host["path"] in host_dirs:
            host["path"] = host_dirs[host["path"]]
    for c in spec.get("containers", []):
        c["args"] = list(c.get("args", [])) + extra_args.get(c["name"], [])
        # podman 4.3 has no spec.nodeName for the downward API; the value
        # it stands for is the node's name, which here is this host's.
        for env in c.get("env", []):
            ref = (env.get("valueFrom") or {}).get("fieldRef") or {}
            if ref.get("fieldPath") == "spec.nodeName":
                del env["valueFrom"]
                env["value"] = node_name
    name = ds["metadata"]["name"] + suffix
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ds["metadata"].get("namespace", "default"),
            "labels": meta.get("labels", {}),
            "annotations": annotations,
        },
        "spec": spec,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rendered")
    p.add_argument("out_dir")
    p.add_argument("--host-dir", action="append", default=[], metavar="PATH=DIR")
    p.add_argument("--args", action="append", default=[], metavar="CONTAINER=ARG,...")
    p.add_argument("--name", default="", metavar="SUFFIX")
    a = p.parse_args()
    host_dirs = dict(h.split("=", 1) for h in a.host_dir)
    extra_args = {}
    for spec in a.args:
        container, args = spec.split("=", 1)
        extra_args[container] = args.split(",")

    with open(a.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    daemonsets = [d for d in docs if d["kind"] == "DaemonSet"]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    if not daemonsets or len(configmaps) != 1:
        sys.exit(f"{a.rendered}: want DaemonSets and one ConfigMap, got "
                 f"{[d['kind'] for d in docs]}")
    pods = [pod_of(ds, host_dirs, extra_args, a.name, socket.gethostname()) for ds in daemonsets]
    with open(f"{a.out_dir}/pods.yaml", "w") as f:
        yaml.safe_dump_all(pods, f, sort_keys=False)
    with open(f"{a.out_dir}/configmap.yaml", "w") as f:
        yaml.safe_dump(configmaps[0], f, sort_keys=False)
    images = []
    for pod in pods:
        spec = pod["spec"]
        name = pod["metadata"]["name"]
        print("pod", name, *[c["name"] for c in spec["containers"]])
        print("grace", name, spec.get("terminationGracePeriodSeconds", 30))
        for c in spec["containers"]:
            probe = c.get("livenessProbe", {})
            if "exec" in probe:
                print("probe", f"{name}-{c['name']}", probe.get("timeoutSeconds", 1),
                      *probe["exec"]["command"])
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c["image"] not in images:
                images.append(c["image"])
    for image in images:
        print("image", image)


if __name__ == "__main__":
    main()
