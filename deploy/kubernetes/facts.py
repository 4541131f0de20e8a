"""What the deployment check needs of the manifests, as JSON on stdout: the wsgate.toml
of the ConfigMap, and the DaemonSet's probes (path, port, host), grace period, preStop
command and writable mount paths."""

import json
import sys

import yaml


def main():
    docs = []
    for path in sys.argv[1:]:
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["wsgate.toml"]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    wsgate = next(c for c in pod["containers"] if c["name"] == "wsgate")
    probes = {}
    for kind in ("readinessProbe", "livenessProbe"):
        get = wsgate[kind]["httpGet"]
        probes[kind] = {"path": get["path"], "port": get["port"], "host": get.get("host", "")}
    pre_stop = wsgate.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    writable = [m["mountPath"] for m in wsgate.get("volumeMounts", []) if not m.get("readOnly", False)]
    print(json.dumps({"config": config, "probes": probes, "grace": pod["terminationGracePeriodSeconds"],
                      "pre_stop": pre_stop, "writable": writable}))


if __name__ == "__main__":
    main()
