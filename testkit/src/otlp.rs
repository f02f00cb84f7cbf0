//! An OTLP receiver in the test process: takes what an exporter posts (OTLP over HTTP,
//! JSON encoding, as the worker and `ingest` export) and keeps every span, for a test to
//! read. HTTP/1.1 on 127.0.0.1, keep-alive, answered `200 {}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The exporting service (`service.name` of the resource).
    pub service: String,
    pub name: String,
    /// OTLP's number: 2 server, 5 consumer, ...
    pub kind: u64,
    /// Lowercase hex, as W3C writes them.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// Attributes with a string or integer value, as text.
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

/// The receiver; it stops listening when dropped (the thread ends at the next connection
/// attempt or never, harmlessly).
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("its address");
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        OtlpReceiver { addr, spans }
    }

    /// The endpoint to give an exporter (`tracing.otlp_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }
}

/// Answers each request on one connection until it closes.
fn serve(stream: TcpStream, kept: &Mutex<Vec<ReceivedSpan>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(request) = serde_json::from_slice::<Value>(&body) {
            kept.lock().expect("spans").extend(read_spans(&request));
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The spans of an `ExportTraceServiceRequest` in its JSON form.
fn read_spans(request: &Value) -> Vec<ReceivedSpan> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_lowercase();
    let mut out = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .remove("service.name")
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    kind: span["kind"].as_u64().unwrap_or_default(),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    attributes: attributes(&span["attributes"]),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| (text(&l["traceId"]), text(&l["spanId"])))
                        .collect(),
                });
            }
        }
    }
    out
}

/// `[{"key": k, "value": {"stringValue": v}}]` (or `intValue`) as a map of text.
fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let key = a["key"].as_str()?.to_owned();
            let value = &a["value"];
            let text = match (&value["stringValue"], &value["intValue"]) {
                (Value::String(s), _) => s.clone(),
                (_, Value::String(n)) => n.clone(),
                (_, Value::Number(n)) => n.to_string(),
                _ => value.to_string(),
            };
            Some((key, text))
        })
        .collect()
}
