//! `stoa bench` runs its own cluster and reports figures that add up.

use stoa_tests::{stoa_bin, wasm_path};

#[test]
fn stoa_bench_measures_latency_throughput_and_the_ceiling() -> anyhow::Result<()> {
    let task = wasm_path("hello_task", "hello-task")?;
    let out = std::process::Command::new(stoa_bin()?)
        .args([
            "bench",
            "--samples",
            "10",
            "--tasks",
            "60",
            "--json",
            "--task",
        ])
        .arg(&task)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let number = |path: &[&str]| {
        path.iter()
            .fold(&figures, |v, k| &v[*k])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let (p50, p99) = (
        number(&["latency_ms", "p50"]),
        number(&["latency_ms", "p99"]),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{figures}");
    assert!(number(&["throughput_tasks_per_s"]) > 0.0, "{figures}");
    assert!(number(&["ceiling_instantiations_per_s"]) > 0.0, "{figures}");
    assert_eq!(figures["tasks"], 60);
    Ok(())
}

#[test]
fn stoa_bench_api_measures_pages_the_ui_poll_and_the_event_stream() -> anyhow::Result<()> {
    let out = std::process::Command::new(stoa_bin()?)
        .args([
            "bench", "api", "--tasks", "600", "--agents", "3", "--calls", "5", "--json",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(figures["tasks"], 600);
    let latencies = figures["latencies"].as_array().cloned().unwrap_or_default();
    assert_eq!(latencies.len(), 7, "{figures}");
    for l in &latencies {
        let (p50, p99) = (l["p50_ms"].as_f64(), l["p99_ms"].as_f64());
        assert!(p50.zip(p99).is_some_and(|(a, b)| a > 0.0 && a <= b), "{l}");
    }
    // Every kill's end reached the follower, as an event.
    assert!(
        figures["events_seen"].as_u64().is_some_and(|n| n >= 600),
        "{figures}"
    );
    assert!(figures["ends_per_s"].as_f64().is_some_and(|r| r > 0.0));
    assert!(figures["ui_poll_cpu_ms"].as_f64().is_some_and(|c| c >= 0.0));
    Ok(())
}
