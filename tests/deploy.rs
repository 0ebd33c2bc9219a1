//! The deployment artifacts (Dockerfile, docker-compose.yml, deploy/) against the server they
//! deploy: every setting they name is one the server knows (README's configuration table and
//! `mpr --help`), probes and ports agree with the settings, the runtime user is not root, the
//! dashboard and the alerts query only metrics src/telemetry.rs exports, and the real binary
//! starts and is ready with the compose file's and the manifests' environments (hostnames
//! rewritten to local servers on free ports).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use support::{Mongo, Redis, free_port};

const TELEMETRY: &str = include_str!("../src/telemetry.rs");
const RPC_ERROR: &str = include_str!("../src/rpc/error.rs");
const README: &str = include_str!("../README.md");
const DOCKERFILE: &str = include_str!("../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../.dockerignore");
const COMPOSE: &str = include_str!("../docker-compose.yml");
const HA_COMPOSE: &str = include_str!("../deploy/compose/ha.yml");
const HA_ACAPY_COMPOSE: &str = include_str!("../deploy/compose/acapy.yml");
const HA_CI_COMPOSE: &str = include_str!("../deploy/compose/ci.yml");
const HAPROXY_CFG: &str = include_str!("../deploy/compose/haproxy.cfg");
const DASHBOARD: &str = include_str!("../deploy/grafana/mpr-dashboard.json");
const ALERTS: &str = include_str!("../deploy/prometheus/alerts.yml");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of `text`, as JSON values (aliases resolved).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn yaml(text: &str) -> Value {
    let mut documents = yaml_documents(text);
    assert_eq!(documents.len(), 1, "one YAML document");
    documents.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a string, not {value}"))
}

/// A scalar setting as the server reads it (YAML may give numbers or booleans).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("a setting must be a scalar, not {other}"),
    }
}

/// The configuration table of README.md: variable → default cell.
fn readme_settings() -> BTreeMap<String, String> {
    README
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let default = cells[3].trim_matches('`').to_owned();
            (name, default)
        })
        .collect()
}

/// The environment variables `mpr --help` names.
fn binary_settings() -> BTreeSet<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mpr"))
        .arg("--help")
        .output()
        .expect("mpr --help runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// The settings the server knows; README's table and the binary must agree on them.
fn known_settings() -> BTreeSet<String> {
    let readme: BTreeSet<String> = readme_settings().into_keys().collect();
    assert!(readme.len() > 40, "README's configuration table was found");
    assert_eq!(
        readme,
        binary_settings(),
        "README's configuration table and `mpr --help` name the same variables"
    );
    readme
}

fn default_of(name: &str) -> u64 {
    let defaults = readme_settings();
    let cell = defaults
        .get(name)
        .unwrap_or_else(|| panic!("{name} in README"));
    cell.parse()
        .unwrap_or_else(|_| panic!("{name}'s default {cell} is a number"))
}

fn assert_known(names: impl IntoIterator<Item = String>, known: &BTreeSet<String>, what: &str) {
    for name in names {
        assert!(
            known.contains(&name),
            "{what} sets {name}, which the server does not know"
        );
    }
}

/// Metric constants of src/telemetry.rs.
fn exported_metrics() -> BTreeSet<String> {
    let metrics: BTreeSet<String> = TELEMETRY
        .lines()
        .filter_map(|line| line.strip_prefix("pub const "))
        .filter_map(|line| line.split('"').nth(1))
        .map(str::to_owned)
        .collect();
    assert!(metrics.len() > 30, "telemetry.rs's constants were found");
    metrics
}

/// The `mpr_…` names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("mpr_") {
        let preceded_by_ident = rest[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric a series name belongs to (histograms and summaries add suffixes).
fn base_metric(series: &str, exported: &BTreeSet<String>) -> Option<String> {
    if exported.contains(series) {
        return Some(series.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| exported.contains(*base))
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn dockerfile_builds_the_server_and_runs_it_as_a_user() {
    let stages: Vec<&str> = DOCKERFILE
        .split("\nFROM ")
        .skip(1)
        .map(|stage| stage.trim())
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    // The base images are build arguments (CI passes local stand-ins) whose defaults are the
    // official images.
    let base_image = |arg: &str| -> &str {
        DOCKERFILE
            .lines()
            .find_map(|line| line.strip_prefix(&format!("ARG {arg}=")))
            .unwrap_or_else(|| panic!("ARG {arg} with a default"))
    };
    let builder = stages[0];
    assert!(builder.starts_with("${RUST_IMAGE} AS builder"));
    assert!(
        base_image("RUST_IMAGE").starts_with("rust:"),
        "the builder is the official Rust image by default"
    );
    assert!(stages.last().unwrap().starts_with("${RUNTIME_IMAGE}"));
    assert_eq!(base_image("RUNTIME_IMAGE"), "debian:bookworm-slim");
    assert!(
        !DOCKERFILE.contains("# syntax="),
        "no frontend image to pull: the engine's own Dockerfile frontend builds it"
    );
    assert!(builder.contains("cargo build --release") && builder.contains("-p mpr"));
    assert!(
        builder.matches("cargo build").count() >= 2,
        "dependencies are built in a layer of their own before the sources are copied"
    );

    let runtime = stages.last().unwrap();
    let instructions: Vec<&str> = runtime.lines().map(str::trim).collect();
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "the runtime user is numeric and not root: {user}"
    );
    assert!(runtime.contains("ca-certificates"));
    let exposed: BTreeSet<u64> = instructions
        .iter()
        .filter_map(|line| line.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace())
        .map(|port| port.parse().expect("a port"))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([default_of("WS_PORT"), default_of("APP_PORT")])
    );
    let healthcheck = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("\nENTRYPOINT")
        .next()
        .unwrap();
    assert!(healthcheck.contains("curl") && runtime.contains(" curl"));
    assert!(healthcheck.contains("/health"));
    assert!(
        healthcheck.contains(&format!("${{APP_PORT:-{}}}", default_of("APP_PORT"))),
        "the healthcheck follows APP_PORT"
    );
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/mpr\"]"));

    for ignored in ["target/", "node_modules/", ".git/"] {
        assert!(
            DOCKERIGNORE
                .lines()
                .any(|line| line.trim().ends_with(ignored)),
            ".dockerignore leaves out {ignored}"
        );
    }
}

/// SocketDock's image installs the dependency versions the tests run SocketDock with (those of
/// ../shared/tools/socketdock-run), runs it as a user, and takes its base image as an argument.
#[test]
fn socketdock_image_pins_the_tested_dependencies() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/socketdock/Dockerfile"))
        .expect("deploy/socketdock/Dockerfile");
    let launcher = std::fs::read_to_string(root().join("../shared/tools/socketdock-run"))
        .expect("../shared/tools/socketdock-run beside the repository");
    let pins = |text: &str| -> BTreeSet<String> {
        text.split_whitespace()
            .filter(|word| word.contains("==") && !word.starts_with('-'))
            .map(|word| word.trim_matches(|c| c == '(' || c == ')').to_owned())
            .collect()
    };
    let tested = pins(
        launcher
            .split("PINS=(")
            .nth(1)
            .and_then(|rest| rest.split("\n)").next())
            .expect("socketdock-run's PINS"),
    );
    assert!(
        tested.len() > 10,
        "socketdock-run's pins were found: {tested:?}"
    );
    assert_eq!(pins(&dockerfile), tested);
    assert!(dockerfile.contains("ARG PYTHON_IMAGE=python:3"));
    assert!(dockerfile.contains("FROM ${PYTHON_IMAGE}"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("HEALTHCHECK"));
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/// `${VAR:-default}` gives its default, `${VAR:?message}` and `${VAR}` give `given(VAR)`.
fn interpolate(text: &str, given: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else {
            let name = inner.split(":?").next().unwrap();
            out.push_str(&given(name));
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    yaml(COMPOSE)
}

/// The services running the mpr image, by name.
fn mpr_services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, service)| service["image"] == "mpr:local")
        .map(|(name, service)| (name.clone(), service.clone()))
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment is a mapping")
        .iter()
        .map(|(name, value)| (name.clone(), scalar(value)))
        .collect()
}

/// "host:published:container" or "published:container" → (published, container).
fn port_mapping(spec: &str) -> (String, u64) {
    let (published, container) = spec.rsplit_once(':').expect("published:container");
    let container = container.split('/').next().unwrap();
    (
        published.to_owned(),
        container.parse().expect("container port"),
    )
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a duration in seconds: {duration}"))
}

fn url_authority(url: &str) -> &str {
    let after = url.split_once("://").expect("a URL").1;
    let authority = after.split(['/', '?']).next().unwrap();
    authority.rsplit('@').next().unwrap()
}

#[test]
fn compose_services_agree_with_the_servers_settings() {
    let known = known_settings();
    let compose = compose();
    assert_eq!(compose["version"], "3.8");
    let services = compose["services"].as_object().unwrap();

    let redis = &services["redis"];
    let command = arguments(&redis["command"]);
    let after = |flag: &str| argument_after(&command, flag);
    assert_eq!(after("--appendonly"), Some("yes"));
    assert!(matches!(
        after("--appendfsync"),
        Some("always" | "everysec")
    ));
    assert!(str_of(&services["mongodb"]["image"], "image").starts_with("mongo:"));

    for (name, service) in services {
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
        if let Some(depends) = service["depends_on"].as_object() {
            for (on, condition) in depends {
                assert!(services.contains_key(on), "{name} depends on {on}");
                assert_eq!(condition["condition"], "service_healthy", "{name} on {on}");
            }
        }
    }

    let instances = mpr_services(&compose);
    assert_eq!(instances.len(), 2, "two mpr instances");
    let mut published = BTreeSet::new();
    let mut shared = BTreeSet::new();
    for (name, service) in &instances {
        let env = environment(service);
        assert_known(env.keys().cloned(), &known, name);
        let ws_port: u64 = env["WS_PORT"].parse().unwrap();
        let app_port: u64 = env["APP_PORT"].parse().unwrap();
        let mut containers = BTreeSet::new();
        for spec in service["ports"].as_array().expect("ports") {
            let (host, container) = port_mapping(str_of(spec, "port"));
            assert!(
                published.insert(host.clone()),
                "{name} publishes {host} alone"
            );
            containers.insert(container);
        }
        assert_eq!(containers, BTreeSet::from([ws_port, app_port]), "{name}");
        let health: Vec<&str> = service["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| str_of(arg, "argument"))
            .collect();
        assert!(
            health.contains(&format!("http://127.0.0.1:{app_port}/ready").as_str()),
            "{name} is healthy once /ready answers: {health:?}"
        );
        for (setting, service_name) in [("REDIS_URL", "redis"), ("MONGODB_URI", "mongodb")] {
            let host = url_authority(&env[setting]).split(':').next().unwrap();
            assert_eq!(host, service_name, "{name}'s {setting}");
            assert_eq!(
                service["depends_on"][service_name]["condition"],
                "service_healthy"
            );
        }
        let shutdown = env
            .get("SHUTDOWN_TIMEOUT_MS")
            .map_or_else(|| default_of("SHUTDOWN_TIMEOUT_MS"), |v| v.parse().unwrap());
        assert!(
            seconds(str_of(&service["stop_grace_period"], "stop_grace_period")) * 1000 > shutdown,
            "{name}'s stop_grace_period outlasts SHUTDOWN_TIMEOUT_MS"
        );
        assert_eq!(service["read_only"], true);
        shared.insert(env);
    }
    assert_eq!(shared.len(), 1, "both instances have the same settings");
    let env = shared.into_iter().next().unwrap();

    // SocketDock calls back an mpr instance's APP_PORT with the same secret the servers hold.
    let socketdock = &services["socketdock"];
    assert!(
        str_of(&socketdock["image"], "image")
            .starts_with("ghcr.io/openwallet-foundation/aries-socketdock")
    );
    let args: Vec<&str> = socketdock["command"]
        .as_array()
        .expect("socketdock command")
        .iter()
        .map(|arg| str_of(arg, "argument"))
        .collect();
    let option = |flag: &str| {
        args.iter()
            .position(|arg| *arg == flag)
            .map(|at| args[at + 1])
            .unwrap_or_else(|| panic!("socketdock {flag}"))
    };
    assert!(
        !args.contains(&"--bindport"),
        "the image takes only its default port"
    );
    assert_eq!(option("--backend"), "http");
    let secret_variable = env["SOCKETDOCK_SECRET"]
        .strip_prefix("${")
        .and_then(|rest| rest.split([':', '}']).next())
        .expect("SOCKETDOCK_SECRET comes from the environment, not the file");
    for route in ["connect", "message", "disconnect"] {
        let uri = option(&format!("--{route}-uri"));
        let (base, query) = uri.split_once('?').expect("a query");
        assert_eq!(query, format!("secret=${{{secret_variable}}}"));
        let authority = url_authority(base);
        let (host, port) = authority.split_once(':').expect("host:port");
        assert!(
            instances.contains_key(host),
            "{route} calls back an mpr instance"
        );
        assert_eq!(port, env["APP_PORT"]);
        assert_eq!(base, format!("http://{authority}/socketdock/{route}"));
    }
    let endpoint = option("--endpoint");
    assert!(
        env["SOCKETDOCK_ENDPOINTS"]
            .split(',')
            .any(|e| e == endpoint),
        "the servers deliver to SocketDock's --endpoint"
    );
    assert!(env.contains_key("MEDIATOR_URL"));
    assert_eq!(
        socketdock["depends_on"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|on| instances.contains_key(*on))
            .count(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// deploy/kubernetes

struct Manifests {
    documents: Vec<Value>,
}

impl Manifests {
    fn load() -> Self {
        let folder = root().join("deploy/kubernetes");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
            .expect("deploy/kubernetes")
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .collect();
        paths.sort();
        let documents: Vec<Value> = paths
            .iter()
            .flat_map(|path| yaml_documents(&std::fs::read_to_string(path).unwrap()))
            .collect();
        for document in &documents {
            assert!(document["apiVersion"].is_string() && document["kind"].is_string());
        }
        Self { documents }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.documents
            .iter()
            .filter(|document| document["kind"] == kind)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|document| document["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("a {kind} named {name}"))
    }

    fn container(&self) -> &Value {
        let containers = self.named("Deployment", "mpr")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    fn config_map(&self) -> BTreeMap<String, String> {
        let name = self.env_from("configMapRef");
        let data = self.named("ConfigMap", &name)["data"].as_object().unwrap();
        data.iter().map(|(k, v)| (k.clone(), scalar(v))).collect()
    }

    fn secret_env(&self) -> BTreeMap<String, String> {
        let name = self.env_from("secretRef");
        let data = self.named("Secret", &name)["stringData"]
            .as_object()
            .unwrap();
        data.iter().map(|(k, v)| (k.clone(), scalar(v))).collect()
    }

    fn env_from(&self, reference: &str) -> String {
        let sources = self.container()["envFrom"].as_array().expect("envFrom");
        let names: Vec<&str> = sources
            .iter()
            .filter_map(|source| source[reference]["name"].as_str())
            .collect();
        assert_eq!(names.len(), 1, "one {reference}");
        names[0].to_owned()
    }

    /// The container port a probe or a Service names (by name or number).
    fn container_port(&self, port: &Value) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let name = str_of(port, "port");
        self.container()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("a container port named {name}"))
    }

    /// Files of the pod: mount path → (secret name, keys).
    fn secret_mounts(&self) -> Vec<(String, String)> {
        let pod = &self.named("Deployment", "mpr")["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        self.container()["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|mount| {
                let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
                let secret = volume["secret"]["secretName"].as_str()?;
                Some((
                    str_of(&mount["mountPath"], "mountPath").to_owned(),
                    secret.to_owned(),
                ))
            })
            .collect()
    }

    /// The environment the pod's container gets, as the server reads it.
    fn pod_environment(&self) -> BTreeMap<String, String> {
        let mut env = self.config_map();
        env.extend(self.secret_env());
        env
    }
}

#[test]
fn kubernetes_manifests_agree_with_the_servers_settings() {
    let known = known_settings();
    let manifests = Manifests::load();
    let config = manifests.config_map();
    assert_known(config.keys().cloned(), &known, "the ConfigMap");
    assert_known(manifests.secret_env().into_keys(), &known, "the Secret");
    let setting = |name: &str| {
        config
            .get(name)
            .map_or_else(|| default_of(name), |v| v.parse().unwrap())
    };
    let (ws_port, app_port) = (setting("WS_PORT"), setting("APP_PORT"));

    let deployment = manifests.named("Deployment", "mpr");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let container = manifests.container();

    let ports: BTreeMap<String, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "name").to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("ws".into(), ws_port), ("http".into(), app_port)])
    );
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(manifests.container_port(&get["port"]), app_port, "{probe}");
    }

    // Shutdown: the grace period covers the preStop pause and the server's own shutdown.
    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .map(|args| args.iter().map(|a| str_of(a, "argument")).collect())
        .unwrap_or_default();
    let pause_ms = match pre_stop.as_slice() {
        ["sleep", seconds] => seconds.parse::<u64>().unwrap() * 1000,
        [] => 0,
        other => panic!("an unexpected preStop: {other:?}"),
    };
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    assert!(
        grace_ms > pause_ms + setting("SHUTDOWN_TIMEOUT_MS"),
        "terminationGracePeriodSeconds outlasts preStop plus SHUTDOWN_TIMEOUT_MS"
    );

    // Not root, read-only root filesystem, the Dockerfile's user.
    let dockerfile_uid: u64 = DOCKERFILE
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .and_then(|user| user.split(':').next()?.parse().ok())
        .expect("the Dockerfile's numeric USER");
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["runAsUser"].as_u64(), Some(dockerfile_uid));
    assert_ne!(dockerfile_uid, 0);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "{bound}.{resource}"
            );
        }
    }

    // Push credential files: every path setting points into a mounted Secret that has the file.
    let mounts = manifests.secret_mounts();
    for name in ["FIREBASE_CFG_FILE", "APNS_CFG_FILE", "APNS_PATH_KEY"] {
        let Some(path) = config.get(name) else {
            continue;
        };
        let (dir, secret) = mounts
            .iter()
            .find(|(dir, _)| Path::new(path).parent() == Some(Path::new(dir)))
            .unwrap_or_else(|| panic!("{name}={path} is in a mounted Secret"));
        let file = path.strip_prefix(&format!("{dir}/")).unwrap();
        assert!(
            manifests.named("Secret", secret)["stringData"][file].is_string(),
            "Secret {secret} holds {file}"
        );
    }

    // Service: both ports, onto the container's.
    let service = manifests.named("Service", "mpr");
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "the Service selects the pods");
    }
    let service_ports: BTreeSet<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| manifests.container_port(&p["targetPort"]))
        .collect();
    assert_eq!(service_ports, BTreeSet::from([ws_port, app_port]));

    let pdb = manifests.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    let hpa = manifests.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert!(
        hpa["spec"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["resource"]["name"] == "cpu"),
        "scales on CPU"
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
}

/// A command line given as a YAML list.
fn arguments(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list of arguments")
        .iter()
        .map(|arg| str_of(arg, "argument"))
        .collect()
}

/// The argument after `flag` in `args`.
fn argument_after<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|arg| *arg == flag)
        .map(|at| args[at + 1])
}

/// The only container of a workload's pod template.
fn only_container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// A Service's port `name` as "service:port" (how the other manifests address it).
fn service_address(manifests: &Manifests, service: &str, name: &str) -> String {
    let ports = manifests.named("Service", service)["spec"]["ports"]
        .as_array()
        .expect("ports");
    let port = ports
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("Service {service} has a port {name}"));
    format!("{service}:{}", port["port"])
}

/// Each name is a setting of the mediator (mediators/<mediator>), as its README's table says.
fn assert_mediator_knows<'a>(mediator: &str, names: impl Iterator<Item = &'a String>) {
    let readme =
        std::fs::read_to_string(root().join(format!("mediators/{mediator}/README.md"))).unwrap();
    for name in names {
        assert!(
            readme.contains(&format!("| `{name}`")) || readme.contains(&format!("/ `{name}`")),
            "the {mediator} mediator knows {name}"
        );
    }
}

/// The numeric user of a Dockerfile's last USER line.
fn dockerfile_user(path: &str) -> u64 {
    std::fs::read_to_string(root().join(path))
        .unwrap()
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .and_then(|user| user.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{path}'s numeric USER"))
}

/// A container's env: literal values, and `secret:<name>/<key>` for a Secret's key (which must
/// exist) or `field:<path>` for the downward API.
fn container_env(manifests: &Manifests, container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().expect("env") {
        let name = str_of(&var["name"], "name").to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            format!("field:{field}")
        } else {
            let reference = &var["valueFrom"]["secretKeyRef"];
            let (secret, key) = (
                str_of(&reference["name"], "name"),
                str_of(&reference["key"], "key"),
            );
            assert!(
                manifests.named("Secret", secret)["stringData"][key].is_string(),
                "{name}: Secret {secret} has {key}"
            );
            format!("secret:{secret}/{key}")
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn kubernetes_socketdock_and_mediator_fit_the_servers() {
    let manifests = Manifests::load();
    let config = manifests.config_map();
    let mpr_app = service_address(&manifests, "mpr", "http");
    let mpr_ws = service_address(&manifests, "mpr", "ws");

    // SocketDock: a StatefulSet whose pods announce the addresses the servers list.
    let socketdock = manifests.named("StatefulSet", "socketdock");
    let headless = manifests.named(
        "Service",
        str_of(&socketdock["spec"]["serviceName"], "serviceName"),
    );
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "a headless Service names the pods"
    );
    let container = only_container(socketdock);
    let env = container_env(&manifests, container);
    assert_eq!(env["POD_NAME"], "field:metadata.name");
    assert_eq!(
        env["SOCKETDOCK_SECRET"], "secret:mpr/SOCKETDOCK_SECRET",
        "the servers' secret"
    );
    let args = arguments(&container["args"]);
    let arg = |flag: &str| argument_after(&args, flag).unwrap_or_else(|| panic!("{flag}"));
    let replicas = socketdock["spec"]["replicas"].as_u64().unwrap();
    let announced: Vec<String> = (0..replicas)
        .map(|ordinal| arg("--endpoint").replace("$(POD_NAME)", &format!("socketdock-{ordinal}")))
        .collect();
    assert_eq!(
        config["SOCKETDOCK_ENDPOINTS"]
            .split(',')
            .collect::<Vec<_>>(),
        announced,
        "SOCKETDOCK_ENDPOINTS are the pods' --endpoint"
    );
    let headless_port = service_address(&manifests, "socketdock", "socketdock");
    assert!(arg("--endpoint").ends_with(&format!(".{headless_port}")));
    for route in ["connect", "message", "disconnect"] {
        assert_eq!(
            arg(&format!("--{route}-uri")),
            format!("http://{mpr_app}/socketdock/{route}?secret=$(SOCKETDOCK_SECRET)")
        );
    }
    assert_eq!(
        socketdock["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(dockerfile_user("deploy/socketdock/Dockerfile"))
    );

    // The mediator: settings it knows, the servers' and SocketDock's addresses, secrets by
    // reference only.
    let mediator = manifests.named("Deployment", "mediator");
    let container = only_container(mediator);
    let env = container_env(&manifests, container);
    // Either mediator's image runs with it (mediators/acapy takes the same settings).
    for mediator in ["credo", "acapy"] {
        assert_mediator_knows(mediator, env.keys());
    }
    for secret in ["MPR_TOKEN", "WALLET_KEY", "POSTGRES_PASSWORD"] {
        assert_eq!(
            env[secret],
            format!("secret:mediator/{secret}"),
            "{secret} by reference"
        );
    }
    assert_eq!(env["MPR_URL"], format!("ws://{mpr_ws}"));
    assert_eq!(env["INBOUND_MODE"], "socketdock");
    let port_of = |name: &str| -> String {
        let ports = container["ports"].as_array().unwrap();
        let port = ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("port {name}"));
        port["containerPort"].to_string()
    };
    assert_eq!(env["HTTP_PORT"], port_of("http"));
    assert_eq!(env["SOCKETDOCK_PORT"], port_of("frames"));
    assert_eq!(
        config["MEDIATOR_URL"],
        format!(
            "http://{}",
            service_address(&manifests, "mediator", "frames")
        ),
        "the servers forward SocketDock's frames to the mediators' frames port"
    );
    for dockerfile in ["mediators/credo/Dockerfile", "mediators/acapy/Dockerfile"] {
        assert_eq!(
            mediator["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64(),
            Some(dockerfile_user(dockerfile))
        );
    }

    // From outside: /ws only to SocketDock (its other routes need no credentials).
    let ingress = manifests.one("Ingress");
    let mut to_socketdock = Vec::new();
    for rule in ingress["spec"]["rules"].as_array().unwrap() {
        for path in rule["http"]["paths"].as_array().unwrap() {
            let service = str_of(&path["backend"]["service"]["name"], "service");
            let selector = &manifests.named("Service", service)["spec"]["selector"];
            if selector["app.kubernetes.io/name"] == "socketdock" {
                to_socketdock.push((
                    str_of(&path["path"], "path"),
                    str_of(&path["pathType"], "pathType"),
                ));
            } else {
                assert_eq!(service, "mediator");
                assert_eq!(
                    path["backend"]["service"]["port"]["name"], "http",
                    "never the frames port"
                );
            }
        }
    }
    assert_eq!(to_socketdock, [("/ws", "Exact")]);
}

// ---------------------------------------------------------------------------------------------
// Grafana and Prometheus

#[test]
fn dashboard_queries_every_metric_the_server_exports_and_no_other() {
    let exported = exported_metrics();
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let uid = format!("${{{}}}", str_of(&datasource["name"], "name"));

    let mut used = BTreeSet::new();
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        assert_eq!(
            panel["datasource"]["uid"],
            uid.as_str(),
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for target in targets {
            let expr = str_of(&target["expr"], "expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries an mpr metric");
            for name in names {
                let base = base_metric(&name, &exported)
                    .unwrap_or_else(|| panic!("{name} is not a metric of telemetry.rs"));
                used.insert(base);
            }
        }
    }
    assert!(panels > 10);
    let missing: Vec<_> = exported.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "metrics not on the dashboard: {missing:?}"
    );
}

#[test]
fn alerts_query_only_metrics_the_server_exports() {
    let exported = exported_metrics();
    let alerts = yaml(ALERTS);
    let mut alerting = BTreeSet::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = str_of(&rule["alert"], "alert").to_owned();
            let expr = str_of(&rule["expr"], "expr");
            for metric in metric_names(expr) {
                let base = base_metric(&metric, &exported)
                    .unwrap_or_else(|| panic!("{name}: {metric} is not a metric of telemetry.rs"));
                alerting.insert(base);
            }
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            assert!(rule["labels"]["severity"].is_string(), "{name}");
            // Calls Redis failed are counted with outcome="error" (src/rpc/error.rs).
            if expr.contains("outcome=\"error\"") && expr.contains("mpr_calls_total") {
                assert!(RPC_ERROR.contains("\"error\""));
            }
            if expr.contains("mpr_open_sockets") {
                let bound = default_of("MAX_SOCKETS").to_string();
                assert!(
                    expr.contains(&bound),
                    "{name} uses MAX_SOCKETS' default {bound}"
                );
            }
        }
    }
    for needed in [
        "mpr_calls_total",
        "mpr_cold_available",
        "mpr_pushes_failed_total",
        "mpr_events_undeliverable_total",
        "mpr_open_sockets",
        "mpr_mover_failures_total",
        "mpr_cold_degraded_total",
    ] {
        assert!(alerting.contains(needed), "an alert on {needed}");
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/compose/ha.yml and its proxy

/// The secrets of ha.yml: each required from the environment (`${NAME:?…}`), never defaulted.
const HA_SECRETS: [&str; 4] = [
    "SOCKETDOCK_SECRET",
    "MPR_TOKEN",
    "MEDIATOR_WALLET_KEY",
    "POSTGRES_PASSWORD",
];

/// ha.yml with every variable at its default and each secret as `secret-<name>`.
fn ha_compose() -> Value {
    yaml(&interpolate(HA_COMPOSE, &|name| {
        format!("secret-{name}").to_lowercase()
    }))
}

/// A service's key, or the same key of what it merges in (`<<: *anchor`).
fn merged<'a>(service: &'a Value, key: &str) -> &'a Value {
    match &service[key] {
        Value::Null => &service["<<"][key],
        value => value,
    }
}

#[test]
fn ha_composition_keeps_secrets_out_and_publishes_only_the_proxy() {
    for secret in HA_SECRETS {
        assert!(
            HA_COMPOSE.contains(&format!("${{{secret}:?")),
            "{secret} is required"
        );
        assert!(
            !HA_COMPOSE.contains(&format!("${{{secret}:-")),
            "{secret} has no default"
        );
    }
    let compose = ha_compose();
    let services = compose["services"].as_object().expect("services");
    let published: Vec<&String> = services
        .iter()
        .filter(|(_, service)| !merged(service, "ports").is_null())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(published, ["proxy"], "only the proxy publishes a port");
    for name in [
        "socketdock-1",
        "socketdock-2",
        "mpr-1",
        "mpr-2",
        "mediator-1",
        "mediator-2",
        "redis",
        "mongodb",
        "postgres",
    ] {
        assert!(services.contains_key(name), "ha.yml runs {name}");
    }
    // Redis appends every write to its file before answering (acknowledged means on disk).
    let redis_command = compose["services"]["redis"]["command"].to_string();
    assert!(redis_command.contains(r#""--appendonly","yes","--appendfsync","always""#));

    // The servers: settings they know, callbacks and deliveries only to services of the file.
    let known = known_settings();
    for name in ["mpr-1", "mpr-2"] {
        let env = environment(&services[name]);
        assert_known(env.keys().cloned(), &known, name);
        assert_eq!(env["AUTH_TOKENS"], "secret-mpr_token");
        let endpoints: BTreeSet<&str> = env["SOCKETDOCK_ENDPOINTS"].split(',').collect();
        let announced: BTreeSet<String> = ["socketdock-1", "socketdock-2"]
            .iter()
            .map(|sd| {
                let args = merged(&services[*sd], "command").as_array().expect("args");
                let at = args
                    .iter()
                    .position(|a| a == "--endpoint")
                    .expect("--endpoint");
                str_of(&args[at + 1], "--endpoint").to_owned()
            })
            .collect();
        assert_eq!(
            endpoints,
            announced.iter().map(String::as_str).collect(),
            "SOCKETDOCK_ENDPOINTS are the SocketDock instances' --endpoint"
        );
    }

    // Every backend the proxy names is a service of the file (an address is
    // "${VARIABLE-default}": the default is the composition's), and the public side refuses
    // SocketDock's own routes.
    for line in HAPROXY_CFG.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("server ") {
            let address = rest.split_whitespace().nth(1).expect("server NAME ADDRESS");
            let address = address
                .strip_prefix("\"${")
                .and_then(|a| a.strip_suffix("}\""))
                .and_then(|a| a.split_once('-'))
                .map_or(address, |(_, default)| default);
            let host = address.split(':').next().unwrap();
            assert!(
                services.contains_key(host),
                "haproxy.cfg names {host}, not a service"
            );
        }
    }
    assert!(HAPROXY_CFG.contains("http-request deny deny_status 403 if { path_sub /socket/ }"));
}

#[test]
fn acapy_composition_changes_only_the_mediators_image_and_health_check() {
    let acapy = yaml(&interpolate(HA_ACAPY_COMPOSE, &|name| name.to_owned()));
    let services = acapy["services"].as_object().expect("services");
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["mediator-1", "mediator-2"]
    );
    for (name, service) in services {
        let mut keys: BTreeSet<&str> = service
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        if let Some(merged) = service["<<"].as_object() {
            keys.remove("<<");
            keys.extend(merged.keys().map(String::as_str));
        }
        assert!(
            keys.is_subset(&BTreeSet::from([
                "image",
                "build",
                "healthcheck",
                "depends_on"
            ])),
            "{name} changes only its image, build, health check and order: {keys:?}"
        );
        assert_eq!(
            merged(service, "build")["dockerfile"],
            "mediators/acapy/Dockerfile"
        );
    }
    // ha.yml's settings of the mediators, and ci.yml's, are the ACA-Py mediator's too.
    let ci = yaml(&interpolate(HA_CI_COMPOSE, &|name| name.to_owned()));
    for compose in [ha_compose(), ci] {
        for name in ["mediator-1", "mediator-2"] {
            let env = compose["services"][name]["environment"]
                .as_object()
                .unwrap();
            // ci.yml's mediator-2 merges mediator-1's (checked on its own).
            assert_mediator_knows("acapy", env.keys().filter(|key| *key != "<<"));
        }
    }
}

#[tokio::test]
async fn the_server_starts_with_the_ha_composition_environment() {
    let env = environment(&ha_compose()["services"]["mpr-1"]);
    serve_with(env, "deploy/compose/ha.yml").await;
}

// ---------------------------------------------------------------------------------------------
// The real server with the artifacts' environments

/// Replaces the authority (host:port) of every URL in a comma-separated list.
fn rehost(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let authority = url_authority(url);
            url.replacen(authority, &format!("127.0.0.1:{}", free_port()), 1)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The database a MongoDB URI names.
fn database_of(uri: &str) -> String {
    let after = uri.split_once("://").unwrap().1;
    let path = after.split_once('/').map_or("", |(_, path)| path);
    let database = path.split('?').next().unwrap();
    if database.is_empty() {
        "MessagePickupRepository".to_owned()
    } else {
        database.to_owned()
    }
}

/// Starts the binary with `env`, its servers rewritten to local ones, and checks its probes.
async fn serve_with(env: BTreeMap<String, String>, what: &str) {
    let redis = Redis::start();
    let mongo = env
        .contains_key("MONGODB_URI")
        .then(|| Mongo::start(":memory:"));
    let mut opts =
        testkit::MprOpts::new(env!("CARGO_BIN_EXE_mpr"), &redis.url()).expect("free ports");
    opts.name = format!("mpr with {what}'s environment");
    opts.clear_env = true;
    let mut rewritten = Vec::new();
    for (name, value) in env {
        let value = match name.as_str() {
            "WS_PORT" => opts.ws_port.to_string(),
            "APP_PORT" => opts.app_port.to_string(),
            "BIND_ADDRESS" => "127.0.0.1".to_owned(),
            "REDIS_URL" => redis.url(),
            "MONGODB_URI" => mongo.as_ref().unwrap().url(&database_of(&value)),
            "MEDIATOR_URL" | "SOCKETDOCK_ENDPOINTS" => rehost(&value),
            "LOG_LEVEL" => "warn".to_owned(),
            _ => value,
        };
        rewritten.push((name, value));
    }
    opts.env = rewritten;
    let server = testkit::MprServer::spawn(opts).expect("mpr binary");
    server
        .wait_ready()
        .await
        .unwrap_or_else(|error| panic!("{what}: {error:#}"));
    for path in ["/health", "/ready", "/metrics"] {
        let (status, body) = server.http_get(path).await.expect("an answer");
        assert_eq!(status, 200, "{what}: GET {path}: {body}");
    }
    server.terminate().expect("it stops");
}

#[tokio::test]
async fn the_server_starts_with_the_compose_environment() {
    let compose = compose();
    let instances = mpr_services(&compose);
    let (_, service) = instances.iter().next().expect("an mpr service");
    let env = environment(service)
        .into_iter()
        .map(|(name, value)| {
            let value = interpolate(&value, &|variable| {
                format!("test-{variable}").to_lowercase()
            });
            (name, value)
        })
        .collect();
    serve_with(env, "docker-compose.yml").await;
}

#[tokio::test]
async fn the_server_starts_with_the_kubernetes_environment() {
    let manifests = Manifests::load();
    let mut env = manifests.pod_environment();
    // The push Secret's files, written where the ConfigMap's paths point, placeholders and all.
    let files = std::env::temp_dir().join(support::unique_id("mpr-push"));
    std::fs::create_dir_all(&files).unwrap();
    for (dir, secret) in manifests.secret_mounts() {
        let data = manifests.named("Secret", &secret)["stringData"]
            .as_object()
            .unwrap();
        for (file, content) in data {
            std::fs::write(files.join(file), str_of(content, "file")).unwrap();
        }
        for value in env.values_mut() {
            if let Some(file) = value.strip_prefix(&format!("{dir}/")) {
                *value = files.join(file).display().to_string();
            }
        }
    }
    serve_with(env, "deploy/kubernetes").await;
    let _ = std::fs::remove_dir_all(&files);
}
