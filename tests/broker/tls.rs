//! `amqps://` against a private node with a TLS listener and certificates made by the
//! test: verification against a CA file, mutual TLS with `EXTERNAL`, and each failure
//! mode failing the start with exit 69 and saying which.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A node with a TLS listener on `tls_port` serving `broker.pem` (CA `ca.pem`), asking
/// for a client certificate without requiring one, with `EXTERNAL` enabled.
fn tls_node(pki: &TestPki, tls_port: u16) -> PrivateNode {
    let conf = format!(
        "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n",
        pki.cert("ca").display(),
        pki.cert("broker").display(),
        pki.key("broker").display(),
    );
    PrivateNode::start_with(&conf, &["rabbitmq_auth_mechanism_ssl"])
}

/// `(user, ssl)` of each connection in `vhost`.
fn connections(node: &PrivateNode, vhost: &TestVhost) -> Vec<(String, String)> {
    let out = node.rabbitmqctl(&[
        "-q",
        "list_connections",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "user",
        "ssl",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(u, s)| (u.to_owned(), s.to_owned()))
        .collect()
}

/// One webhook in, its event out, through a worker connected at `url` with `env`.
async fn normalizes_through(vhost: &TestVhost, url: &str, env: &[(&str, &str)]) -> WorkerProcess {
    let worker = WorkerProcess::start_with_url(url, env);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(vhost).await;
    let webhooks = webhook_mix(3, "tls");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
    worker
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_verifies_the_broker_and_presents_a_client_certificate() {
    let pki = TestPki::new();
    let tls_port = free_port();
    let node = tls_node(&pki, tls_port);
    let ca = pki.cert("ca");
    let ca = ca.to_str().unwrap();

    // The broker verified against the test CA; guest by password.
    let vhost = TestVhost::on(&node, "tls");
    let url = format!("amqps://guest:guest@localhost:{tls_port}/{}", vhost.name);
    let worker = normalizes_through(&vhost, &url, &[("NORMALIZER__AMQP__TLS__CA_FILE", ca)]).await;
    let workers: Vec<_> = connections(&node, &vhost)
        .into_iter()
        .filter(|(user, _)| user == "guest")
        .collect();
    // Ours over TLS (consumer and publisher); the test's own over plain AMQP.
    assert_eq!(
        workers.iter().filter(|(_, ssl)| ssl == "true").count(),
        2,
        "{workers:?}"
    );
    drop(worker);

    // Mutual TLS: the user is the client certificate's common name, no password sent.
    let vhost = TestVhost::on(&node, "mtls");
    node.add_user(CLIENT_NAME, "unused-with-external");
    node.rabbitmqctl(&[
        "set_permissions",
        "-p",
        &vhost.name,
        CLIENT_NAME,
        ".*",
        ".*",
        ".*",
    ]);
    let url = format!(
        "amqps://localhost:{tls_port}/{}?auth_mechanism=external",
        vhost.name
    );
    let (cert, key) = (pki.cert("client"), pki.key("client"));
    let _worker = normalizes_through(
        &vhost,
        &url,
        &[
            ("NORMALIZER__AMQP__TLS__CA_FILE", ca),
            ("NORMALIZER__AMQP__TLS__CERT_FILE", cert.to_str().unwrap()),
            ("NORMALIZER__AMQP__TLS__KEY_FILE", key.to_str().unwrap()),
        ],
    )
    .await;
    let users: Vec<_> = connections(&node, &vhost)
        .into_iter()
        .filter(|(_, ssl)| ssl == "true")
        .map(|(user, _)| user)
        .collect();
    assert_eq!(users, [CLIENT_NAME, CLIENT_NAME]);
}

/// The worker's exit code and its last log lines, started at `url` with `env`.
fn start_fails(url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut worker = WorkerProcess::start_with_url(url, env);
    let code = worker.wait_exit(Duration::from_secs(20));
    (code, worker.log_tail(5))
}

/// `run` refused before it starts anything: its exit code and stderr.
fn refused_at_start(url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let child = Command::new(worker_binary())
        .arg("run")
        .env("NORMALIZER__AMQP__URL", url)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(20));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A wrong CA, no CA file (the system's roots do not know the test CA), a host name
/// the certificate does not carry, an expired certificate, a plain-text port: the start
/// fails with exit 69, saying which. A TLS file that cannot be read, or TLS files with
/// `amqp://`, is a configuration error (exit 78) naming the setting.
#[tokio::test(flavor = "multi_thread")]
async fn each_tls_failure_fails_the_start_saying_which() {
    let pki = TestPki::new();
    let tls_port = free_port();
    let node = tls_node(&pki, tls_port);
    let vhost = TestVhost::on(&node, "tlsfail");
    let ca = pki.cert("ca");
    let other = pki.cert("other-ca");
    let url = |host: &str, port: u16| format!("amqps://guest:guest@{host}:{port}/{}", vhost.name);

    // An expired broker certificate, served by openssl on a port of its own.
    let expired_port = free_port();
    let mut expired_server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{expired_port}"))
        .arg("-cert")
        .arg(pki.cert("expired-broker"))
        .arg("-key")
        .arg(pki.key("expired-broker"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    wait_until(Duration::from_secs(10), "openssl to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", expired_port)).is_ok()
    });

    let ca_file = ("NORMALIZER__AMQP__TLS__CA_FILE", ca.to_str().unwrap());
    // (case, url, environment, what the error says)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        (
            "another CA",
            url("localhost", tls_port),
            vec![("NORMALIZER__AMQP__TLS__CA_FILE", other.to_str().unwrap())],
            "not signed by a CA we trust",
        ),
        (
            "the system's roots",
            url("localhost", tls_port),
            vec![],
            "not signed by a CA we trust",
        ),
        (
            "a name the certificate lacks",
            url("127.0.0.1", tls_port),
            vec![ca_file],
            "does not name the host in amqp.url",
        ),
        (
            "an expired certificate",
            url("localhost", expired_port),
            vec![ca_file],
            "has expired",
        ),
        (
            "a plain-text port",
            url("localhost", node.port()),
            vec![ca_file],
            "the port does not speak TLS",
        ),
    ];
    for (case, url, env, says) in cases {
        let (code, logs) = start_fails(&url, &env);
        assert_eq!(code, Some(69), "{case}: {logs}");
        assert!(logs.contains("TLS handshake failed"), "{case}: {logs}");
        assert!(logs.contains(says), "{case}: {logs}");
        assert!(
            !logs.contains("guest:guest"),
            "{case}: the password: {logs}"
        );
    }
    let _ = expired_server.kill();
    let _ = expired_server.wait();

    let missing = pki.cert("no-such-file");
    let (code, logs) = refused_at_start(
        &url("localhost", tls_port),
        &[("NORMALIZER__AMQP__TLS__CA_FILE", missing.to_str().unwrap())],
    );
    assert_eq!(code, Some(78), "{logs}");
    assert!(logs.contains("amqp.tls.ca_file"), "{logs}");
    let plain = format!(
        "amqp://guest:guest@localhost:{}/{}",
        node.port(),
        vhost.name
    );
    let (code, logs) = refused_at_start(&plain, &[ca_file]);
    assert_eq!(code, Some(78), "{logs}");
    assert!(
        logs.contains("amqp.tls: TLS files are set but amqp.url is amqp://"),
        "{logs}"
    );
}
