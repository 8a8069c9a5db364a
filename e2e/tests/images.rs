//! ferrolb's container images as a user runs them: each names the commit it was built from,
//! the controller runs as 65532 on a read-only root filesystem, the speaker image holds the
//! speaker and a working `nft` (the one program it executes) and nothing else, and the echo
//! image answers HTTP and UDP with its reply format.
//!
//! `make images` builds them first (`make images-test` runs both); when an image is
//! missing every test here fails and says so. Needs a Docker engine (`make images` starts
//! one) and root: the tests enter containers' network namespaces (the project's engine runs
//! without a bridge network, so the host has no route to a container) and chroot into an
//! image's files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ferrolb_e2e::lab::echo::EchoReply;
use ferrolb_speaker::election::Protocol;
use ferrolb_speaker::forwarding::kernel::Kernel;
use ferrolb_speaker::forwarding::{Forward, Ruleset, nft};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `docker ARGS`: its stdout, trimmed; panics with its stderr when it fails.
fn docker(args: &[&str]) -> String {
    let out = run("docker", args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The three image names, as `images.sh --print-names` prints them; each must exist.
fn images() -> [String; 3] {
    let script = repo().join("e2e/scripts/images.sh");
    let out = run("bash", &[script.to_str().unwrap(), "--print-names"]);
    assert!(out.status.success(), "images.sh --print-names failed");
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let names: [String; 3] = names
        .try_into()
        .unwrap_or_else(|n| panic!("expected three names (controller, speaker, echo): {n:?}"));
    for name in &names {
        let found = run("docker", &["image", "inspect", "--format", "{{.Id}}", name]);
        assert!(
            found.status.success(),
            "image {name} is missing: build it with `make images` ({})",
            String::from_utf8_lossy(&found.stderr).trim()
        );
    }
    names
}

fn label(image: &str, key: &str) -> String {
    docker(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
        image,
    ])
}

/// The commit the checkout is at, as the binaries print it (without `-dirty`).
fn head() -> String {
    let out = run(
        "git",
        &[
            "-C",
            repo().to_str().unwrap(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
    );
    assert!(out.status.success(), "this test runs in the git checkout");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A container started by a test, removed (by ID) when the test ends, however it ends.
struct Container(String);

impl Container {
    fn run_detached(args: &[&str]) -> Container {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        Container(docker(&all))
    }

    fn pid(&self) -> u32 {
        docker(&["inspect", "--format", "{{.State.Pid}}", &self.0])
            .parse()
            .unwrap()
    }

    fn logs(&self) -> String {
        let out = run("docker", &["logs", &self.0]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.0]);
    }
}

#[test]
fn every_image_names_the_commit_it_was_built_from() {
    let [controller, speaker, echo] = images();
    let head = head();
    let version = env!("CARGO_PKG_VERSION");
    for (image, binary) in [
        (&controller, "ferrolb-controller"),
        (&speaker, "ferrolb-speaker"),
        (&echo, "ferrolb-lab"),
    ] {
        let entrypoint = format!("/{binary}");
        let printed = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            &entrypoint,
            image,
            "--version",
        ]);
        let commit = printed
            .strip_prefix(&format!("{binary} {version} (git "))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{image}: --version printed {printed:?}"));
        assert!(
            commit == head || commit == format!("{head}-dirty"),
            "{image} was built from {commit}, the checkout is at {head}: run `make images` again"
        );
        assert_eq!(label(image, "org.opencontainers.image.revision"), commit);
        assert_eq!(label(image, "org.opencontainers.image.version"), version);
        assert_eq!(
            label(image, "org.opencontainers.image.source"),
            "https://github.com/ferrolb/ferrolb"
        );
    }
}

#[test]
fn the_controller_runs_as_65532_on_a_read_only_root() {
    let [controller, _, _] = images();
    assert_eq!(
        docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            &controller
        ]),
        "65532:65532"
    );
    // As the chart runs it: no capabilities, no privilege gain, nothing writable.
    let confined = [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
    ];
    let mut help = vec!["run", "--rm"];
    help.extend_from_slice(&confined);
    help.extend_from_slice(&[controller.as_str(), "--help"]);
    let usage = docker(&help);
    assert!(usage.contains("--kubeconfig"), "{usage}");

    // Started for real, with a kubeconfig naming its CA as the in-cluster config does (the
    // image holds no CA bundle) and an API server it cannot reach (it keeps retrying), it
    // runs as 65532 and serves its admin port.
    let ca = ferrolb_e2e::pki::Pki::new("images-test").unwrap();
    let kubeconfig = tempfile::tempdir().unwrap();
    std::fs::write(
        kubeconfig.path().join("config"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1', certificate-authority-data: {}}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca.ca_pem())
        ),
    )
    .unwrap();
    // Readable by 65532: a temporary directory is root's alone.
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (kubeconfig.path().to_path_buf(), 0o755),
        (kubeconfig.path().join("config"), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mount = format!("{}:/kube:ro", kubeconfig.path().display());
    let mut args = confined.to_vec();
    args.extend_from_slice(&[
        "-v",
        &mount,
        controller.as_str(),
        "--kubeconfig",
        "/kube/config",
        "--identity",
        "images-test",
        "--admin-address",
        "127.0.0.1:7472",
    ]);
    let c = Container::run_detached(&args);
    let pid = c.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        panic!(
            "the controller exited at once ({e}); its log:\n{}",
            c.logs()
        )
    });
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(uids, ["65532"; 4], "real, effective, saved, fs uid");
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, 7472));
    let (healthz, metrics) = in_netns(pid, move || {
        (http_get(admin, "/healthz"), http_get(admin, "/metrics"))
    });
    assert!(
        healthz.starts_with("HTTP/1.1 200"),
        "{healthz}\nlog:\n{}",
        c.logs()
    );
    let build_info = format!(
        r#"ferrolb_build_info{{version="{}",commit="{}"}} 1"#,
        env!("CARGO_PKG_VERSION"),
        label(&controller, "org.opencontainers.image.revision")
    );
    assert!(
        metrics.contains(&build_info),
        "{build_info} not in:\n{metrics}"
    );
}

/// Every file of the speaker image is the speaker, a program it executes (`nft`), or a
/// shared library that program loads, as the image's own dynamic loader resolves it.
#[test]
fn the_speaker_image_holds_the_speaker_nft_and_nfts_libraries_only() {
    let [_, speaker, _] = images();
    let root = RootFs::export(&speaker);
    let mut needed = BTreeSet::from(["ferrolb-speaker".to_string(), NFT.to_string()]);
    needed.extend(root.libraries_of(NFT));
    assert_eq!(image_files(&speaker), needed);
}

/// The image's `nft`, with nothing but the image's files, loads the speaker's forwarding
/// rules, reads their counters and removes them (in a throw-away network namespace).
#[tokio::test]
async fn the_speaker_images_nft_loads_the_speakers_rules() {
    let [_, speaker, _] = images();
    let root = RootFs::export(&speaker);
    let ns = Netns::new("flbt-img-nft");
    let mut kernel = Kernel::new(
        [
            "ip",
            "netns",
            "exec",
            ns.0,
            "chroot",
            root.path(),
            &format!("/{NFT}"),
        ]
        .map(String::from)
        .to_vec(),
        nft::DEFAULT_MARK,
    );
    let lb: IpAddr = "10.88.0.200".parse().unwrap();
    let ruleset = Ruleset {
        node_v4: Some("10.88.0.11".parse().unwrap()),
        node_v6: Some("fd88::11".parse().unwrap()),
        owned: BTreeSet::from([lb]),
        forwards: BTreeSet::from([Forward {
            ip: lb,
            protocol: Protocol::Tcp,
            port: 80,
            node_port: 30080,
        }]),
        allowed_sources: Default::default(),
    };
    assert!(
        kernel.apply(&ruleset).await.unwrap(),
        "the first load loads"
    );
    let listed = ns.nft(&["list", "table", "inet", "ferrolb"]);
    assert!(listed.contains("30080"), "{listed}");
    kernel.counters().await.unwrap();
    kernel.remove().await.unwrap();
    assert!(!ns.nft(&["list", "tables"]).contains("ferrolb"));
}

#[test]
fn the_echo_image_answers_http_and_udp() {
    let [_, _, echo] = images();
    let c = Container::run_detached(&[
        "--read-only",
        "--network",
        "none",
        echo.as_str(),
        "--pod",
        "demo/echo-0",
        "--node",
        "node-a",
        "--port",
        "8080",
    ]);
    let pid = c.pid();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
    let (http, udp) = in_netns(pid, move || {
        let http = http_get(server, "/");
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.send_to(b"who?", server).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(from, server);
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        (http, (reply, socket.local_addr().unwrap()))
    });
    assert!(
        http.starts_with("HTTP/1.1 200"),
        "{http}\nlog:\n{}",
        c.logs()
    );
    let body = http.split_once("\r\n\r\n").unwrap().1;
    let reply = EchoReply::parse(body).unwrap_or_else(|| panic!("not an echo reply: {body:?}"));
    assert_eq!(reply.pod, "demo/echo-0");
    assert_eq!(reply.node, "node-a");
    assert_eq!(reply.client.ip(), Ipv4Addr::LOCALHOST);

    let (text, local) = udp;
    let reply = EchoReply::parse(&text).unwrap_or_else(|| panic!("not an echo reply: {text:?}"));
    assert_eq!(
        (reply.pod.as_str(), reply.node.as_str(), reply.client),
        ("demo/echo-0", "node-a", local)
    );
}

/// Runs `f` on a thread inside the network namespace of process `pid`.
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .unwrap_or_else(|e| panic!("the container's process {pid} is gone: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering a container's network namespace needs root");
        f()
    })
    .join()
    .unwrap()
}

/// `GET path` from `addr`, connecting for up to 20 s while nothing listens yet; the raw
/// response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("nothing answers on {addr}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Where the speaker image keeps `nft` (relative to its root).
const NFT: &str = "usr/sbin/nft";

/// An image's files as a container sees them (`docker export`), unpacked into a temporary
/// directory.
struct RootFs {
    _dir: tempfile::TempDir,
    root: String,
}

impl RootFs {
    fn export(image: &str) -> RootFs {
        let dir = tempfile::tempdir().unwrap();
        let created = Container(docker(&["create", image]));
        let archive = dir.path().join("rootfs.tar");
        docker(&["export", "-o", archive.to_str().unwrap(), &created.0]);
        drop(created);
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let out = run(
            "tar",
            &[
                "-x",
                "-f",
                archive.to_str().unwrap(),
                "-C",
                root.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "tar could not unpack {image}");
        std::fs::remove_file(archive).unwrap();
        RootFs {
            root: root.display().to_string(),
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        &self.root
    }

    /// The shared libraries `program` loads, as paths relative to the root, resolved by the
    /// image's own dynamic loader (`ld.so --list` in a chroot); panics when one is missing.
    fn libraries_of(&self, program: &str) -> BTreeSet<String> {
        let root = self.path();
        let ld = ["lib64/ld-linux-x86-64.so.2", "lib/ld-linux-x86-64.so.2"]
            .into_iter()
            .find(|ld| Path::new(root).join(ld).exists())
            .unwrap_or_else(|| panic!("no x86-64 dynamic loader in the image for {program}"));
        let out = run(
            "chroot",
            &[root, &format!("/{ld}"), "--list", &format!("/{program}")],
        );
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !listed.contains("not found"),
            "{program} cannot load its libraries in the image:\n{listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        listed
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(_), Some("=>"), Some(path)) if path.starts_with('/') => Some(path),
                    (Some(path), _, _) if path.starts_with('/') => Some(path),
                    _ => None,
                }
            })
            .map(|p| p.trim_start_matches('/').to_string())
            .collect()
    }
}

/// A network namespace of the test, deleted when it ends.
struct Netns(&'static str);

impl Netns {
    fn new(name: &'static str) -> Netns {
        let _ = run("ip", &["netns", "del", name]);
        let out = run("ip", &["netns", "add", name]);
        assert!(
            out.status.success(),
            "ip netns add {name} (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    /// The host's `nft` in this namespace: its stdout.
    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.0, "nft"];
        all.extend_from_slice(args);
        let out = run("ip", &all);
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", self.0]);
    }
}

/// The files (not directories) of an image, from `docker image save`: what its layers
/// hold, without what a container runtime adds.
fn image_files(image: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    docker(&["image", "save", "-o", archive.to_str().unwrap(), image]);
    let unpacked = dir.path().join("image");
    std::fs::create_dir(&unpacked).unwrap();
    let out = run(
        "tar",
        &[
            "-x",
            "-f",
            archive.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "tar could not unpack the saved image");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(unpacked.join("manifest.json")).unwrap())
            .unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let mut files = BTreeSet::new();
    for layer in layers {
        let layer = unpacked.join(layer.as_str().unwrap());
        let out = run("tar", &["-t", "-f", layer.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "tar could not list {}",
            layer.display()
        );
        files.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|name| !name.ends_with('/'))
                .map(|name| name.trim_start_matches("./").to_string()),
        );
    }
    files
}
