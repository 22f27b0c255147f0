//! The deployable artefacts: manifests, the Dockerfile and the justfile say
//! what the deployment guide promises, and agree with each other.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn docs(rel: &str) -> Vec<Value> {
    common::yaml::documents(&read(rel))
}

/// The DaemonSets of a manifest, by name.
fn daemonsets(rel: &str) -> Vec<Value> {
    docs(rel)
        .into_iter()
        .filter(|d| d["kind"] == "DaemonSet")
        .collect()
}

fn containers(ds: &Value) -> Vec<Value> {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn container(rel: &str, name: &str) -> (Value, Value) {
    for ds in daemonsets(rel) {
        if let Some(c) = containers(&ds).into_iter().find(|c| c["name"] == name) {
            return (ds, c);
        }
    }
    panic!("{rel}: no container {name}")
}

/// The justfile's default image references.
fn default_images() -> (String, String) {
    let just = read("justfile");
    let registry = just
        .lines()
        .find_map(|l| l.strip_prefix("REGISTRY := env_var_or_default(\"REGISTRY\", \""))
        .and_then(|l| l.split('"').next())
        .expect("REGISTRY default in the justfile");
    assert!(
        just.contains(r#"TAG := env_var_or_default("TAG", "v" + "#),
        "TAG is v + the crate version"
    );
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    (
        format!("{registry}/node-problem-detector:{tag}"),
        format!("{registry}/gpu-monitor:{tag}"),
    )
}

const MANIFESTS: [&str; 2] = [
    "manifests/npd-ext-daemonset.yaml",
    "manifests/npd-ext-separate.yaml",
];

#[test]
fn the_gpu_container_is_unprivileged_and_takes_no_gpu() {
    for rel in MANIFESTS {
        let (_, gpu) = container(rel, "gpu-monitor");
        let sc = &gpu["securityContext"];
        assert_eq!(sc["runAsUser"], 1000, "{rel}");
        assert_eq!(sc["runAsNonRoot"], true, "{rel}");
        assert_eq!(sc["privileged"], false, "{rel}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{rel}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{rel}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{rel}");
        for kind in ["requests", "limits"] {
            let r = &gpu["resources"][kind];
            assert!(
                r.get("nvidia.com/gpu").is_none(),
                "{rel}: {kind} takes a GPU"
            );
        }
        assert_eq!(gpu["resources"]["requests"]["cpu"], "10m");
        assert_eq!(gpu["resources"]["limits"]["cpu"], "50m");
        assert_eq!(gpu["resources"]["requests"]["memory"], "20Mi");
        assert_eq!(gpu["resources"]["limits"]["memory"], "50Mi");
        let env: Vec<(String, String)> = gpu["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert!(
            env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "all".into())),
            "{rel}"
        );
        assert!(
            env.contains(&("NVIDIA_DRIVER_CAPABILITIES".into(), "utility".into())),
            "{rel}"
        );
    }
}

#[test]
fn the_detector_pod_is_what_the_guide_troubleshoots() {
    for rel in MANIFESTS {
        let (ds, npd) = container(rel, "node-problem-detector");
        assert_eq!(ds["metadata"]["namespace"], "kube-system", "{rel}");
        assert_eq!(
            ds["spec"]["template"]["metadata"]["labels"]["app"], "npd-ext",
            "{rel}"
        );
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{rel}");
        assert_eq!(pod["hostPID"], true, "{rel}");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists", "{rel}");
        assert_eq!(pod["serviceAccountName"], "npd-ext", "{rel}");
        let probe = &npd["livenessProbe"];
        // The guide's health check, http://127.0.0.1:20256/healthz, as an
        // exec probe that the shell-less image can run under any runtime.
        assert_eq!(
            strings(&probe["exec"]["command"], "probe command"),
            [
                "/usr/bin/npd-ext",
                "probe",
                "http://127.0.0.1:20256/healthz",
                "--timeout=2s"
            ],
            "{rel}"
        );
        assert_eq!(probe["periodSeconds"], 60);
        assert_eq!(probe["timeoutSeconds"], 3);
        assert_eq!(npd["resources"]["requests"]["memory"], "80Mi");
        assert_eq!(npd["resources"]["limits"]["cpu"], "10m");
        assert_eq!(npd["securityContext"]["runAsUser"], 0);
        assert_eq!(npd["env"][0]["name"], "NODE_NAME");
        assert_eq!(
            npd["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        let mounts: Vec<(&str, bool)> = npd["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap_or_default(),
                    m["readOnly"] == true,
                )
            })
            .collect();
        for ro in ["/dev/kmsg", "/var/log", "/etc/localtime", "/config"] {
            assert!(mounts.contains(&(ro, true)), "{rel}: {ro} read-only");
        }
    }
    // Separate: the GPU monitor only on GPU nodes.
    let gpu_ds = daemonsets("manifests/npd-ext-separate.yaml")
        .into_iter()
        .find(|d| containers(d).iter().any(|c| c["name"] == "gpu-monitor"))
        .expect("the GPU DaemonSet");
    assert_eq!(
        gpu_ds["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.present"],
        "true"
    );
}

#[test]
fn the_socket_path_agrees_across_config_args_and_volumes() {
    let cm = &docs("manifests/npd-ext-config.yaml")[0];
    let ext: Value = serde_json::from_str(
        cm["data"]["external-gpu-monitor.json"]
            .as_str()
            .expect("entry"),
    )
    .expect("json");
    let socket = ext["pluginConfig"]["socketPath"]
        .as_str()
        .expect("socketPath")
        .to_owned();
    // The same file as the example the README uses.
    let example: Value =
        serde_json::from_str(&read("examples/external-gpu-monitor.json")).expect("json");
    assert_eq!(
        ext, example,
        "the ConfigMap's GPU monitor config drifted from examples/"
    );
    let dir = Path::new(&socket)
        .parent()
        .expect("dir")
        .to_str()
        .expect("utf8")
        .to_owned();
    for rel in MANIFESTS {
        let (ds, gpu) = container(rel, "gpu-monitor");
        let args: Vec<&str> = strings(&gpu["args"], "args");
        assert!(
            args.contains(&format!("--socket={socket}").as_str()),
            "{rel}: {args:?}"
        );
        let probe: Vec<&str> = strings(&gpu["livenessProbe"]["exec"]["command"], "probe");
        assert_eq!(probe.last(), Some(&socket.as_str()), "{rel}");
        let (npd_ds, npd) = container(rel, "node-problem-detector");
        let npd_args: Vec<&str> = strings(&npd["args"], "args");
        assert!(
            npd_args.contains(&"--config.external-monitor=/config/external-gpu-monitor.json"),
            "{rel}"
        );
        assert!(
            npd_args.contains(&"--config.system-log-monitor=/config/kernel-monitor.json"),
            "{rel}"
        );
        // Both mount the socket directory from a volume that is shared.
        for (d, c) in [(&ds, &gpu), (&npd_ds, &npd)] {
            let mount = c["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{rel}: {} does not mount {dir}", c["name"]));
            let vol = d["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the volume");
            let shared = vol.get("emptyDir").is_some() && d == &npd_ds
                || vol["hostPath"]["path"] == dir && vol["hostPath"]["type"] == "DirectoryOrCreate";
            assert!(shared, "{rel}: {vol}");
        }
    }
}

#[test]
fn the_socket_directory_is_prepared_for_the_gpu_monitor_in_both_variants() {
    for rel in MANIFESTS {
        for ds in daemonsets(rel) {
            let pod = &ds["spec"]["template"]["spec"];
            let mounts_socket = containers(&ds).iter().any(|c| c["name"] == "gpu-monitor");
            if !mounts_socket {
                continue;
            }
            let init = pod["initContainers"]
                .as_array()
                .and_then(|i| i.iter().find(|c| c["name"] == "socket-dir"))
                .unwrap_or_else(|| panic!("{rel}: no socket-dir init container"));
            let args: Vec<&str> = strings(&init["args"], "args");
            assert_eq!(
                args,
                [
                    "prepare-dir",
                    "/var/run/npd",
                    "--owner=1000:1000",
                    "--mode=0750"
                ],
                "{rel}"
            );
        }
    }
}

#[test]
fn images_match_the_justfile_and_config_edits_roll_the_pods() {
    let (npd_image, gpu_image) = default_images();
    for rel in MANIFESTS {
        let (_, npd) = container(rel, "node-problem-detector");
        let (_, gpu) = container(rel, "gpu-monitor");
        assert_eq!(npd["image"], npd_image.as_str(), "{rel}");
        assert_eq!(gpu["image"], gpu_image.as_str(), "{rel}");
    }
    let k = &docs("manifests/kustomization.yaml")[0];
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    for image in k["images"].as_array().expect("images") {
        assert_eq!(image["newTag"], tag.as_str());
    }
    assert_eq!(k["labels"][0]["includeSelectors"], false);
    // The checksum annotation follows the ConfigMap (`just config-hash`).
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        read("manifests/npd-ext-config.yaml").as_bytes(),
    );
    let hash: String = digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    for rel in MANIFESTS {
        let ds = &daemonsets(rel)[0];
        assert_eq!(
            ds["spec"]["template"]["metadata"]["annotations"]["npd-ext/config-hash"],
            hash.as_str(),
            "{rel}: stale; run `just config-hash`"
        );
    }
}

#[test]
fn the_dockerfile_builds_one_glibc_image_that_runs_as_1000() {
    let d = read("Dockerfile");
    let arg = |name: &str| {
        d.lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("ARG {name} with a default"))
    };
    // Base images are build arguments, defaulting to the real ones.
    let runtime = arg("RUNTIME_IMAGE");
    assert!(
        runtime.contains("distroless/cc"),
        "a glibc runtime without a shell: {runtime}"
    );
    assert!(
        !runtime.contains("alpine") && !runtime.contains("scratch") && !runtime.contains("musl")
    );
    assert!(
        arg("BUILD_IMAGE").contains("rust:"),
        "{}",
        arg("BUILD_IMAGE")
    );
    assert_eq!(arg("BINARY"), "build", "compiled in the image unless told");
    let stages: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    for stage in [
        "FROM ${BUILD_IMAGE} AS build",
        "FROM scratch AS binary-build",
        "FROM scratch AS binary-host",
        "FROM binary-${BINARY} AS binary",
    ] {
        assert!(stages.contains(&stage), "{stage}: {stages:?}");
    }
    let last = *stages.last().expect("stages");
    assert_eq!(
        last, "FROM ${RUNTIME_IMAGE}",
        "the runtime stage is the image"
    );
    assert!(d.contains("cargo build --release --locked"));
    assert!(d.contains("COPY dist/linux-${TARGETARCH}/ /"));
    let after_runtime = &d[d.find(last).expect("runtime stage")..];
    assert!(after_runtime.lines().any(|l| l.trim() == "USER 1000:1000"));
    assert!(after_runtime.contains(r#"ENTRYPOINT ["/usr/bin/npd-ext"]"#));
    assert!(after_runtime.contains("COPY --from=binary /usr/bin/ /usr/bin/"));
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
    ] {
        assert!(after_runtime.contains(label), "{label}");
    }
    // Both binary sources lay out /usr/bin with scripts/dist.sh, whose
    // applet list is the binary's.
    assert!(d.contains("scripts/dist.sh target/release/npd-ext /out"));
    let dist = read("scripts/dist.sh");
    let listed: Vec<&str> = dist
        .lines()
        .find_map(|l| l.trim().strip_prefix("for applet in "))
        .and_then(|l| l.strip_suffix("; do"))
        .expect("scripts/dist.sh: for applet in …; do")
        .split_whitespace()
        .collect();
    assert_eq!(listed, npd_ext::cli::APPLETS, "scripts/dist.sh applets");
    assert!(after_runtime.contains("COPY --from=binary /home/kubernetes/ /home/kubernetes/"));
}

/// scripts/dist.sh, run: every applet beside the binary, and NPD's helpers
/// where NPD's image and stock configs have them.
#[test]
fn dist_lays_out_the_applets_and_npds_helper_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dist.sh"))
        .arg(env!("CARGO_BIN_EXE_npd-ext"))
        .arg(tmp.path())
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for applet in npd_ext::cli::APPLETS {
        let link = std::fs::read_link(tmp.path().join("usr/bin").join(applet)).expect(applet);
        assert_eq!(link, Path::new("npd-ext"), "{applet}");
    }
    for helper in ["log-counter", "health-checker"] {
        let link =
            std::fs::read_link(tmp.path().join("home/kubernetes/bin").join(helper)).expect(helper);
        assert_eq!(link, Path::new("/usr/bin/npd-ext"), "{helper}");
    }
}

/// The strings of a YAML list such as a container's `args`.
fn strings<'a>(list: &'a Value, what: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("{what}: not a list"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The rules of a ClusterRole in `rel`, as (apiGroup, resource, verb).
fn role_rules(rel: &str, role: &str) -> Vec<(String, String, String)> {
    let docs = docs(rel);
    let r = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role)
        .unwrap_or_else(|| panic!("{rel}: no ClusterRole {role}"));
    let mut out = Vec::new();
    for rule in r["rules"].as_array().expect("rules") {
        for g in strings(&rule["apiGroups"], "apiGroups") {
            for res in strings(&rule["resources"], "resources") {
                for v in strings(&rule["verbs"], "verbs") {
                    out.push((g.to_owned(), res.to_owned(), v.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn taints_are_opt_in_with_a_role_of_their_own() {
    let rule = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
    // A cluster that does not opt in grants nothing that writes a Node.
    let base = role_rules("manifests/rbac.yaml", "npd-ext");
    assert!(!base.contains(&rule("", "nodes", "patch")), "{base:?}");
    assert!(!base.contains(&rule("", "nodes", "list")), "{base:?}");
    // The component: exactly the taint writer's needs, bound to the detector.
    let comp = "manifests/components/taints";
    let extra = role_rules(&format!("{comp}/rbac.yaml"), "npd-ext-taints");
    assert_eq!(
        extra,
        [rule("", "nodes", "list"), rule("", "nodes", "patch")]
    );
    let binding = docs(&format!("{comp}/rbac.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("binding");
    assert_eq!(binding["roleRef"]["name"], "npd-ext-taints");
    assert_eq!(binding["subjects"][0]["name"], "npd-ext");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-system");

    // Its patch adds the flag to the detector, the first container of the
    // DaemonSet npd-ext in both variants, and mounts the generated policy
    // where the flag points.
    let k = &docs(&format!("{comp}/kustomization.yaml"))[0];
    assert_eq!(k["kind"], "Component");
    let generator = &k["configMapGenerator"][0];
    assert_eq!(generator["namespace"], "kube-system");
    let file = generator["files"][0].as_str().expect("policy file");
    let ops = &common::yaml::documents(k["patches"][0]["patch"].as_str().expect("patch"))[0];
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[0]["value"], "node-problem-detector");
    let arg = ops[1]["value"].as_str().expect("arg");
    let mount = ops[2]["value"]["mountPath"].as_str().expect("mount");
    assert_eq!(arg, format!("--taint-policy={mount}/{file}"));
    assert_eq!(ops[3]["value"]["configMap"]["name"], generator["name"]);
    for rel in MANIFESTS {
        let ds = daemonsets(rel)
            .into_iter()
            .find(|d| d["metadata"]["name"] == "npd-ext")
            .expect("DaemonSet npd-ext");
        assert_eq!(containers(&ds)[0]["name"], "node-problem-detector", "{rel}");
    }

    // The shipped policy is valid, and taints for conditions gpu-monitor's
    // shipped config declares.
    let path = root().join(comp).join(file);
    let text = read(&format!("{comp}/{file}"));
    let checked = npd_ext::config::taint_policy::check(&path, &text);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    let policy = checked.config.unwrap_or_else(|| panic!("{errors:?}"));
    let config = docs("manifests/npd-ext-config.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let gpu: Value = serde_json::from_str(
        config["data"]["external-gpu-monitor.json"]
            .as_str()
            .expect("gpu config"),
    )
    .expect("JSON");
    let declared: Vec<&str> = gpu["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    for t in &policy.taints {
        assert!(
            declared.contains(&t.condition.as_str()),
            "{} not declared",
            t.condition
        );
    }
}
