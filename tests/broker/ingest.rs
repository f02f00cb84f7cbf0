//! `webhook-normalizer ingest`, the reference gateway, on a private node (the test stops
//! the broker): 200 only once the broker confirmed, the bytes and the contract's headers
//! as the worker expects them, 503 while the broker is away, 200 again once it is back.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::BasicGetOptions;

use crate::support::*;

struct Ingest {
    child: Child,
    addr: SocketAddr,
    /// Every line it has written to stderr so far.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ingest(url: &str) -> Ingest {
    start_ingest_with(url, &[], None)
}

/// [`start_ingest`] with these settings, and at most `open_files` descriptors (its
/// `RLIMIT_NOFILE`, set with `prlimit`) when given.
fn start_ingest_with(url: &str, env: &[(&str, &str)], open_files: Option<u64>) -> Ingest {
    let mut command = match open_files {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(worker_binary());
            c
        }
        None => Command::new(worker_binary()),
    };
    let child = command
        .arg("ingest")
        .env("NORMALIZER__AMQP__URL", url)
        .env("NORMALIZER__INGEST__LISTEN", "127.0.0.1:0")
        .env("NORMALIZER__INGEST__REQUEST_TIMEOUT_SECS", "5")
        .env("NORMALIZER__LOG__FORMAT", "json")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed when dropped, also if its address never comes.
    let mut ingest = Ingest {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        logs: Default::default(),
    };
    let stderr = ingest.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = ingest.logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            logs.lock().unwrap().push(line.clone());
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = log["address"].as_str().and_then(|a| a.parse().ok()) {
                let _ = tx.send(addr);
            }
        }
    });
    ingest.addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ingest logs its address");
    ingest
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_answers_200_only_after_the_broker_confirmed() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "ingest");
    declare_topology(&vhost);
    let ingest = start_ingest(&vhost.url());

    let mut body = fixture("deel/contract.created.json");
    body.extend_from_slice(b"\n");
    let signed = [("X-Deel-Signature", "abc123"), ("x-deel-hmac-label", "k1")];
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &signed, &body);
    assert_eq!(status, 200);
    let (status, _) = http_post(ingest.addr, "/webhooks/acme", &[], b"{}");
    assert_eq!(status, 404);
    let too_large = vec![b' '; 1024 * 1024 + 1];
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &[], &too_large);
    assert_eq!(status, 413);

    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let got = channel
        .basic_get("normalizer.raw".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the accepted webhook is in the raw queue")
        .delivery;
    assert_eq!(got.data, body, "byte for byte");
    assert_eq!(got.routing_key.as_str(), "deel");
    assert_eq!(header(&got, "x-vendor").as_deref(), Some("deel"));
    assert_eq!(header(&got, "x-deel-signature").as_deref(), Some("abc123"));
    assert_eq!(header(&got, "x-deel-hmac-label").as_deref(), Some("k1"));
    assert!(header(&got, "x-received-at").is_some());
    assert!(message_id(&got).starts_with("ingest-"));
    assert_eq!(*got.properties.delivery_mode(), Some(2));
    assert_eq!(
        queue_depth(&channel, "normalizer.raw").await,
        0,
        "nothing else"
    );
    let _ = conn.close(200, "checked".into()).await;

    // The broker away: 503, so the vendor retries; back: 200 again.
    node.stop_app();
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &[], &body);
    assert_eq!(status, 503);
    node.start_app();
    wait_until(Duration::from_secs(30), "ingest to accept again", || {
        http_post(ingest.addr, "/webhooks/deel", &[], &body).0 == 200
    });
}

/// HMAC-SHA256 in lowercase hex, as the vendors sign (Deel over `POST` and the body).
fn signed(secret: &str, prefix: &[u8], body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(prefix);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The value of one sample of `metric` with these labels on ingest's `/metrics`.
fn metric(addr: SocketAddr, metric: &str, labels: &str) -> u64 {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let wanted = format!("{metric}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(wanted.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Item 4: with secrets configured, `ingest` checks signatures itself: a forged or
/// unsigned Deel request gets 401 and is stored nowhere; one signed with either secret
/// of a rotation gets 200. Authenticate, which signs nothing, is let in only with a
/// configured path token or basic-auth credential. Every 401 is counted.
#[tokio::test(flavor = "multi_thread")]
async fn forged_requests_get_401_and_are_counted() {
    use base64::Engine as _;
    let vhost = TestVhost::new("ingest-auth");
    declare_topology(&vhost);
    let ingest = start_ingest_with(
        &vhost.url(),
        &[
            (
                "NORMALIZER__SIGNATURES__DEEL__SECRETS",
                r#"["old-secret","new-secret"]"#,
            ),
            (
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__PATH_TOKENS",
                r#"["t0ken-a1b2c3d4e5f6"]"#,
            ),
            (
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__BASIC",
                r#"["authn:pa55-w0rd-long-enough"]"#,
            ),
        ],
        None,
    );
    let body = fixture("deel/contract.created.json");
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        http_post(ingest.addr, path, headers, body).0
    };
    let old = signed("old-secret", b"POST", &body);
    let new = signed("new-secret", b"POST", &body);
    let forged = signed("guessed", b"POST", &body);
    assert_eq!(
        post("/webhooks/deel", &[("x-deel-signature", &old)], &body),
        200
    );
    assert_eq!(
        post("/webhooks/deel", &[("x-deel-signature", &new)], &body),
        200
    );
    assert_eq!(
        post("/webhooks/deel", &[("x-deel-signature", &forged)], &body),
        401
    );
    assert_eq!(post("/webhooks/deel", &[], &body), 401);
    assert_eq!(
        post("/webhooks/deel", &[("x-deel-signature", "zz")], &body),
        401
    );

    let check = fixture("authenticate/ALL_CRIMINAL_REQUESTS_COMPLETE.json");
    assert_eq!(post("/webhooks/authenticate", &[], &check), 401);
    assert_eq!(post("/webhooks/authenticate/wrong-token", &[], &check), 401);
    assert_eq!(
        post("/webhooks/authenticate/t0ken-a1b2c3d4e5f6", &[], &check),
        200
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("authn:pa55-w0rd-long-enough")
    );
    assert_eq!(
        post(
            "/webhooks/authenticate",
            &[("Authorization", &basic)],
            &check
        ),
        200
    );
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("authn:guess")
    );
    assert_eq!(
        post(
            "/webhooks/authenticate",
            &[("Authorization", &wrong)],
            &check
        ),
        401
    );

    let unauthorized = |vendor: &str| {
        metric(
            ingest.addr,
            "normalizer_ingest_requests_total",
            &format!("vendor=\"{vendor}\",outcome=\"unauthorized\""),
        )
    };
    assert_eq!(unauthorized("deel"), 3);
    assert_eq!(unauthorized("authenticate"), 3);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    assert_eq!(
        queue_depth(&channel, "normalizer.raw").await,
        4,
        "only the genuine ones"
    );
}

/// Item 7: a request with a huge forwarded signature header is refused on its own
/// (400) and costs no other request anything: the broker connection they share stays up.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_header_harms_no_other_request() {
    let vhost = TestVhost::new("ingest-huge-header");
    declare_topology(&vhost);
    let ingest = start_ingest(&vhost.url());
    let addr = ingest.addr;
    let body = fixture("deel/contract.created.json");
    let huge = "a".repeat(70_000);
    let normal: Vec<_> = (0..60)
        .map(|i| {
            let body = body.clone();
            let huge = huge.clone();
            std::thread::spawn(move || {
                if i % 20 == 10 {
                    let headers = [
                        ("x-deel-signature", huge.as_str()),
                        ("x-deel-hmac-label", huge.as_str()),
                    ];
                    (
                        true,
                        post_ignoring_write_errors(addr, "/webhooks/deel", &headers, &body),
                    )
                } else {
                    (false, http_post(addr, "/webhooks/deel", &[], &body).0)
                }
            })
        })
        .collect();
    let answers: Vec<(bool, u16)> = normal.into_iter().map(|t| t.join().unwrap()).collect();
    for (huge, status) in &answers {
        if *huge {
            assert!(matches!(*status, 400 | 431), "{answers:?}");
        } else {
            assert_eq!(*status, 200, "{answers:?}");
        }
    }
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 57);
}

/// Item 8: the first URL of `amqp.url` a black hole (a listener that accepts and never
/// speaks AMQP) that takes longer to time out than a request may wait: `ingest` still
/// reaches the second URL (its attempt outlives the request that started it) and
/// answers 200 once it has, and keeps answering 200.
#[tokio::test(flavor = "multi_thread")]
async fn a_black_hole_first_url_does_not_stop_ingest() {
    let vhost = TestVhost::new("ingest-blackhole");
    declare_topology(&vhost);
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let _held = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for stream in hole.incoming() {
            accepted.push(stream);
        }
    });
    let urls = format!(
        "amqp://guest:guest@{hole_addr}/{},{}",
        vhost.name,
        vhost.url()
    );
    // The connect timeout longer than a request's (5 s): a request cannot wait out the
    // black hole.
    let ingest = start_ingest_with(
        &urls,
        &[("NORMALIZER__AMQP__CONNECT_TIMEOUT_SECS", "8")],
        None,
    );
    let body = fixture("deel/contract.created.json");
    let started = std::time::Instant::now();
    let mut first_ok = None;
    while started.elapsed() < Duration::from_secs(30) {
        if http_post(ingest.addr, "/webhooks/deel", &[], &body).0 == 200 {
            first_ok = Some(started.elapsed());
            break;
        }
    }
    let first_ok = first_ok.expect("a 200 within 30 s");
    assert!(
        first_ok < Duration::from_secs(14),
        "first 200 after {first_ok:?}"
    );
    for _ in 0..10 {
        assert_eq!(http_post(ingest.addr, "/webhooks/deel", &[], &body).0, 200);
    }
}

/// Item 5: with its descriptors limited to 1,024, `ingest` holding 1,100 idle
/// connections and 100 that send their headers a byte at a time still answers a normal
/// request within 5 s, and closes the idle and slow ones within its header timeout.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_connections_do_not_starve_ingest() {
    use std::io::{Read, Write};
    let vhost = TestVhost::new("ingest-idle");
    declare_topology(&vhost);
    let ingest = start_ingest_with(
        &vhost.url(),
        &[("NORMALIZER__INGEST__HEADER_TIMEOUT_SECS", "3")],
        Some(1024),
    );
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = std::net::TcpStream::connect(ingest.addr) {
            idle.push(s);
        }
    }
    for s in idle.iter_mut().take(100) {
        let _ = s.write_all(b"POST /webhooks/deel HTTP/1.1\r\nHost: slow\r\n");
    }
    let body = fixture("deel/contract.created.json");
    let asked = std::time::Instant::now();
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &[], &body);
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // Every one of them closed by ingest within the header timeout (3 s) and a margin.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut open = 0;
    for s in &mut idle {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "{open} of {} still open", idle.len());
}

/// Item 5: 300 requests with 1 MB bodies at once: every one is answered (200, or 503
/// "busy" once it waited its whole request timeout for a turn), and `ingest`'s peak
/// memory stays within the bound its settings state (logged at start).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_large_bodies_stay_within_the_stated_bound() {
    let vhost = TestVhost::new("ingest-memory");
    declare_topology(&vhost);
    let ingest = start_ingest(&vhost.url());
    let addr = ingest.addr;
    let body = std::sync::Arc::new(vec![b' '; 1_000_000]);
    let threads: Vec<_> = (0..300)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http_post(addr, "/webhooks/deel", &[], &body).0)
        })
        .collect();
    let answers: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|s| **s == 200).count();
    assert!(
        answers.iter().all(|s| *s == 200 || *s == 503),
        "{answers:?}"
    );
    assert!(ok > 0, "{answers:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", ingest.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let (_, text) = http_get(addr, "/metrics");
    let bound: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("normalizer_ingest_memory_bound_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the stated bound") as u64;
    assert!(
        peak_kib * 1024 <= bound,
        "peak {peak_kib} KiB over the stated {bound} bytes; {ok} of 300 answered 200"
    );
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    assert_eq!(queue_depth(&channel, "normalizer.raw").await as usize, ok);
}

/// `POST` that reads the answer even when the server stops reading the request early
/// (as it may for headers over its limit): the status, or 0.
fn post_ignoring_write_errors(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    use std::io::{Read, Write};
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A disk alarm on the broker: `ingest` sends nothing while the broker blocks its
/// connection, so its 503s are not stored behind the vendor's back when the alarm
/// clears (a retry would make a second copy). At most the requests publishing when the
/// alarm began (`ingest.max_concurrent_requests`, 4 here) are.
#[tokio::test(flavor = "multi_thread")]
async fn during_a_broker_alarm_nothing_answered_503_is_stored() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "ingest-alarm");
    declare_topology(&vhost);
    let ingest = start_ingest_with(
        &vhost.url(),
        &[("NORMALIZER__INGEST__MAX_CONCURRENT_REQUESTS", "4")],
        None,
    );
    let body = fixture("deel/contract.created.json");
    assert_eq!(http_post(ingest.addr, "/webhooks/deel", &[], &body).0, 200);
    let limit = node.eval("rabbit_disk_monitor:get_disk_free_limit().");
    node.rabbitmqctl(&["set_disk_free_limit", "1000000GB"]);
    wait_until(Duration::from_secs(30), "the disk alarm", || {
        node.eval("rabbit_alarm:get_alarms().").contains("disk")
    });
    let addr = ingest.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| http_post(addr, "/webhooks/deel", &[], &body).0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let answers: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    node.rabbitmqctl(&["set_disk_free_limit", &limit]);
    wait_until(Duration::from_secs(30), "the disk alarm to clear", || {
        !node.eval("rabbit_alarm:get_alarms().").contains("disk")
    });
    std::thread::sleep(Duration::from_secs(2));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let stored = queue_depth(&channel, "normalizer.raw").await - 1;
    assert!(
        stored <= 4,
        "{stored} of {} requests answered 503 were stored once the alarm cleared",
        answers.len()
    );
    // And it takes webhooks again.
    wait_until(Duration::from_secs(30), "ingest to accept again", || {
        http_post(addr, "/webhooks/deel", &[], &body).0 == 200
    });
}

/// `/readyz` says whether a webhook would be sent now: probing connects a gateway that
/// has had no request yet, and with the broker away it answers 503 with the state.
/// Every answer is timed (`normalizer_ingest_request_duration_seconds`) and logged on
/// one access line: vendor, status, outcome, time; no address, header or body.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_says_when_it_is_ready_and_logs_each_answer_without_personal_data() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "ingest-ready");
    declare_topology(&vhost);
    let ingest = start_ingest(&vhost.url());
    wait_until(Duration::from_secs(20), "ingest ready", || {
        http_get(ingest.addr, "/readyz").0 == 200
    });
    let (_, ready) = http_get(ingest.addr, "/readyz");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready, serde_json::json!({"ready": true, "state": "ready"}));

    let body = fixture("deel/contract.created.json");
    assert_eq!(http_post(ingest.addr, "/webhooks/deel", &[], &body).0, 200);
    assert_eq!(
        metric(
            ingest.addr,
            "normalizer_ingest_request_duration_seconds_count",
            r#"vendor="deel",outcome="accepted""#
        ),
        1
    );
    let logs = ingest.logs.lock().unwrap().clone();
    let access: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "ingest: access")
        .collect();
    assert_eq!(access.len(), 1, "{logs:#?}");
    assert_eq!(access[0]["vendor"], "deel", "{:?}", access[0]);
    assert_eq!(access[0]["status"], 200, "{:?}", access[0]);
    assert_eq!(access[0]["outcome"], "accepted", "{:?}", access[0]);
    assert_no_personal_data(&logs);

    node.stop_app();
    wait_until(Duration::from_secs(30), "ingest not ready", || {
        http_get(ingest.addr, "/readyz").0 == 503
    });
    let (_, not_ready) = http_get(ingest.addr, "/readyz");
    let not_ready: serde_json::Value = serde_json::from_str(&not_ready).unwrap();
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    assert!(
        ["connecting", "unreachable"].contains(&not_ready["state"].as_str().unwrap()),
        "{not_ready}"
    );
    node.start_app();
    wait_until(Duration::from_secs(30), "ingest ready again", || {
        http_get(ingest.addr, "/readyz").0 == 200
    });
}

/// The trace runs from the request to what the worker publishes: ingest starts a trace
/// per request (a client's `traceparent` is not trusted by default) and puts it on the
/// raw message; the worker continues it, its own span, on every event and on the dead
/// letter. With `ingest.trust_traceparent`, a client's valid context is continued.
#[tokio::test(flavor = "multi_thread")]
async fn a_trace_runs_from_the_request_to_the_events_and_the_dead_letter() {
    const CLIENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let vhost = TestVhost::new("trace");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;
    let ingest = start_ingest(&vhost.url());
    let with_client = [("traceparent", CLIENT)];
    let good = fixture("deel/contract.created.json");
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &with_client, &good).0,
        200
    );
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &with_client, b"{ not json").0,
        200
    );

    // The raw messages: a trace of ingest's own each, not the client's.
    let trace_of = |d: &lapin::message::Delivery| {
        let header = header(d, "traceparent").expect("a traceparent");
        let parts: Vec<String> = header.split('-').map(str::to_owned).collect();
        assert_eq!(parts.len(), 4, "{header}");
        (parts[1].clone(), parts[2].clone())
    };
    let mut raw = Vec::new();
    for _ in 0..2 {
        let got = channel
            .basic_get("normalizer.raw".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a raw message")
            .delivery;
        raw.push(trace_of(&got));
    }
    assert_ne!(
        raw[0].0, "0af7651916cd43dd8448eb211c80319c",
        "not the client's trace"
    );
    assert_ne!(raw[0].0, raw[1].0, "a trace per request");
    // Back to the queue for the worker, as they were.
    let _ = conn.close(200, "read".into()).await;

    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let events = expected(&RawWebhook::new(good.clone(), Some("deel"), "x")).unwrap();
    let got = read_messages(
        &channel,
        "test.events",
        events.len(),
        Duration::from_secs(30),
    )
    .await;
    for event in &got {
        let (trace, span) = trace_of(event);
        assert_eq!(trace, raw[0].0, "the event is in the request's trace");
        assert_ne!(span, raw[0].1, "from the worker's own span");
    }
    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        1,
        Duration::from_secs(30),
    )
    .await;
    let (trace, span) = trace_of(&dead[0]);
    assert_eq!(trace, raw[1].0, "the dead letter is in its request's trace");
    assert_ne!(span, raw[1].1);
    drop(worker);

    // Trusted: the client's trace continues.
    drop(ingest);
    let ingest = start_ingest_with(
        &vhost.url(),
        &[("NORMALIZER__INGEST__TRUST_TRACEPARENT", "true")],
        None,
    );
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &with_client, &good).0,
        200
    );
    let got = read_messages(&channel, "normalizer.raw", 1, Duration::from_secs(10)).await;
    let (trace, span) = trace_of(&got[0]);
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(
        span, "b7ad6b7169203331",
        "ingest's own span, the client's child"
    );
}

/// With `tracing.sample_ratio = 0`, a trace ingest starts is not exported, and its event
/// carries the context marked not sampled (flags `00`) all the same; a trace continued
/// from a sampled client context (trusted here) is exported whole, ingest's span and the
/// worker's, whatever the ratio.
#[tokio::test(flavor = "multi_thread")]
async fn a_sample_ratio_of_zero_exports_only_traces_sampled_upstream() {
    const CLIENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let exporting = [
        ("NORMALIZER__TRACING__OTLP_ENDPOINT", endpoint.as_str()),
        ("NORMALIZER__TRACING__SAMPLE_RATIO", "0"),
        ("NORMALIZER__INGEST__TRUST_TRACEPARENT", "true"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let vhost = TestVhost::new("otlp-sampled");
    let worker = WorkerProcess::start(&vhost, &exporting);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;
    let ingest = start_ingest_with(&vhost.url(), &exporting, None);
    let traceparent = |d: &lapin::message::Delivery| -> Vec<String> {
        header(d, "traceparent")
            .unwrap()
            .split('-')
            .map(str::to_owned)
            .collect()
    };

    let started_here = fixture("deel/contract.created.json");
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &[], &started_here).0,
        200
    );
    let event = &read_messages(&channel, "test.events", 1, Duration::from_secs(30)).await[0];
    let unsampled = traceparent(event);
    assert_eq!(unsampled[3], "00", "not sampled: {unsampled:?}");

    let continued = fixture("deel/contract.status.updated.json");
    assert_eq!(
        http_post(
            ingest.addr,
            "/webhooks/deel",
            &[("traceparent", CLIENT)],
            &continued
        )
        .0,
        200
    );
    let event = &read_messages(&channel, "test.events", 1, Duration::from_secs(30)).await[0];
    let sampled = traceparent(event);
    assert_eq!(sampled[1], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(sampled[3], "01");
    let mut spans = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the sampled trace's two spans",
        || {
            spans = receiver.spans();
            spans.iter().filter(|s| s.trace_id == sampled[1]).count() >= 2
        },
    );
    // The first trace's spans, had they been sampled, went out before these.
    std::thread::sleep(Duration::from_millis(500));
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == sampled[1]),
        "a span of a trace not sampled was exported: {spans:#?}"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");
    drop(ingest);
    drop(worker);
}

/// With `tracing.otlp_endpoint` set, ingest and the worker export their spans: one trace
/// from the request (ingest's server span, linked to the client's untrusted context) to
/// the worker's consumer span (its child, with the messaging attributes), whose context
/// is the `traceparent` a consumer reads on the event; and to the dead letter of another
/// request, from the worker's span for it.
#[tokio::test(flavor = "multi_thread")]
async fn exported_spans_make_one_trace_from_the_request_to_the_event_and_the_dead_letter() {
    const CLIENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let exporting = [
        ("NORMALIZER__TRACING__OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let vhost = TestVhost::new("otlp");
    let worker = WorkerProcess::start(&vhost, &exporting);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;
    let ingest = start_ingest_with(&vhost.url(), &exporting, None);
    let good = fixture("deel/contract.created.json");
    let client = [("traceparent", CLIENT)];
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &client, &good).0,
        200
    );
    let event = &read_messages(&channel, "test.events", 1, Duration::from_secs(30)).await[0];
    assert_eq!(
        http_post(ingest.addr, "/webhooks/deel", &[], b"{ not json").0,
        200
    );
    let dead = &read_messages(
        &channel,
        "normalizer.dead-letter",
        1,
        Duration::from_secs(30),
    )
    .await[0];
    let parts = |d: &lapin::message::Delivery| -> Vec<String> {
        header(d, "traceparent")
            .unwrap()
            .split('-')
            .map(str::to_owned)
            .collect()
    };
    let (event_trace, dead_trace) = (parts(event), parts(dead));

    let mut spans = Vec::new();
    wait_until(Duration::from_secs(30), "four spans exported", || {
        spans = receiver.spans();
        spans.len() >= 4
    });
    let find = |trace: &str, kind: u64| {
        spans
            .iter()
            .find(|s| s.trace_id == trace && s.kind == kind)
            .unwrap_or_else(|| panic!("a span of kind {kind} in trace {trace}: {spans:#?}"))
            .clone()
    };
    // The request: ingest's server span, a root of ours linked to the client's context.
    let request = find(&event_trace[1], 2);
    assert_eq!(request.service, "webhook-normalizer-ingest");
    assert_eq!(request.name, "POST /webhooks/{vendor}");
    assert_eq!(
        request.parent_span_id, "",
        "the client's context is not its parent"
    );
    assert_eq!(
        request.links,
        [(
            "0af7651916cd43dd8448eb211c80319c".into(),
            "b7ad6b7169203331".into()
        )]
    );
    assert_eq!(request.attributes["http.route"], "/webhooks/{vendor}");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    // The worker: its child, the consumer span whose context the event carries.
    let process = find(&event_trace[1], 5);
    assert_eq!(process.service, "webhook-normalizer");
    assert_eq!(process.parent_span_id, request.span_id);
    assert_eq!(
        process.span_id, event_trace[2],
        "the event's traceparent is the worker's span"
    );
    assert_eq!(process.name, "process normalizer.raw");
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "webhooks.raw"),
        ("messaging.rabbitmq.destination.routing_key", "deel"),
        ("messaging.consumer.group.name", "normalizer.raw"),
    ] {
        assert_eq!(
            process.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert!(process.attributes.contains_key("messaging.message.id"));
    assert!(
        process
            .attributes
            .contains_key("messaging.rabbitmq.message.delivery_tag")
    );
    assert_eq!(process.attributes["webhook_normalizer.events"], "1");
    // The failed one: its own request's trace, the worker's span for it on the dead letter.
    let failed_request = find(&dead_trace[1], 2);
    let failed = find(&dead_trace[1], 5);
    assert_eq!(failed.parent_span_id, failed_request.span_id);
    assert_eq!(failed.span_id, dead_trace[2]);
    assert_eq!(
        failed.attributes["webhook_normalizer.dead_letter.kind"],
        "invalid_json"
    );
    drop(worker);
}
