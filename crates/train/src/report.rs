//! `report.html`: one self-contained page per run folder, for a person to
//! open after a run: the configuration, the summary, the check verdicts (if
//! `train check` ran for this run), every chart (inlined, so the page needs
//! no other file and no network), the warnings, the notes and the confusion
//! matrix.
//!
//! When every image has loaded, the page sets `data-images="loaded"` on its
//! `<body>`, so a headless browser can tell that nothing is missing.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::rundir::RunDir;

/// The charts the page shows, in order, with a caption each.
pub const CHARTS: [(&str, &str); 8] = [
    (
        "loss.png",
        "Training loss per step, its running mean and the epoch boundaries.",
    ),
    (
        "accuracy.png",
        "Training and validation accuracy: a widening gap is overfitting.",
    ),
    ("lr.png", "The learning-rate schedule."),
    (
        "update-ratio.png",
        "Update/weight ratio per layer: about 1e-3 is healthy; far above, lower the learning rate; far below, raise it.",
    ),
    (
        "activations.png",
        "Activation histograms per layer on a fixed probe batch: collapsed, saturated or dead layers show here.",
    ),
    (
        "confusion-val.png",
        "Confusion matrix of the best model on the validation split.",
    ),
    (
        "init-stats.png",
        "Activations of the freshly initialized network on the probe batch (training mode): the lecture's initialization figure.",
    ),
    (
        "lr-find.png",
        "The learning-rate finder's sweep, when the run used --lr find.",
    ),
];

/// Writes `report.html` into `run` from the files it holds; returns its path.
pub fn write_report(run: &RunDir) -> Result<std::path::PathBuf> {
    let read = |name: &str| std::fs::read_to_string(run.file(name)).ok();
    let config = read("config.json").context("the run folder has no config.json")?;
    let summary: Option<serde_json::Value> =
        read("summary.json").and_then(|s| serde_json::from_str(&s).ok());
    let checks: Option<serde_json::Value> =
        read("check.json").and_then(|s| serde_json::from_str(&s).ok());
    let name = run
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.path().display().to_string());

    let mut html = String::new();
    html.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    ));
    let _ = writeln!(html, "<title>Run {}</title>", escape(&name));
    html.push_str(STYLE);
    html.push_str("</head>\n<body data-images=\"loading\">\n");
    let _ = writeln!(html, "<h1>Run <code>{}</code></h1>", escape(&name));

    html.push_str("<h2>Summary</h2>\n");
    match &summary {
        Some(s) => {
            let planned = serde_json::from_str::<serde_json::Value>(&config)
                .ok()
                .and_then(|c| c["epochs"].as_u64());
            html.push_str(&summary_table(s, planned))
        }
        None => html.push_str("<p>No summary.json yet: the run has not finished an epoch.</p>\n"),
    }

    let strings = |key: &str| -> Vec<String> {
        summary
            .as_ref()
            .and_then(|s| s[key].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect()
    };
    let warnings = strings("warnings");
    html.push_str("<h2>Warnings</h2>\n");
    if warnings.is_empty() {
        html.push_str("<p class=\"ok\">None: every monitored layer stayed healthy.</p>\n");
    } else {
        html.push_str("<ul class=\"warnings\">\n");
        for w in &warnings {
            let _ = writeln!(html, "<li>{}</li>", escape(w));
        }
        html.push_str("</ul>\n");
    }
    let notes = strings("notes");
    if !notes.is_empty() {
        html.push_str("<h2>Notes</h2>\n<ul class=\"notes\">\n");
        for n in &notes {
            let _ = writeln!(html, "<li>{}</li>", escape(n));
        }
        html.push_str("</ul>\n");
    }

    if let Some(checks) = &checks {
        html.push_str("<h2>Sanity checks (<code>train check</code>)</h2>\n");
        html.push_str(&checks_table(checks));
    }

    html.push_str("<h2>Charts</h2>\n");
    let mut shown = 0;
    for (file, caption) in CHARTS {
        let Ok(bytes) = std::fs::read(run.file(file)) else {
            continue;
        };
        shown += 1;
        let _ = writeln!(
            html,
            "<figure><img alt=\"{file}\" src=\"data:image/png;base64,{}\"><figcaption><code>{file}</code>: {}</figcaption></figure>",
            base64(&bytes),
            escape(caption)
        );
    }
    if shown == 0 {
        html.push_str("<p>No chart yet.</p>\n");
    }

    html.push_str("<h2>Configuration</h2>\n");
    let _ = writeln!(html, "<pre>{}</pre>", escape(&config));
    html.push_str(SCRIPT);
    html.push_str("</body>\n</html>\n");
    let path = run.file("report.html");
    crate::rundir::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// The summary as a table; `planned` is the run's epoch budget, shown
/// beside the epochs done when the run stopped short of it.
fn summary_table(s: &serde_json::Value, planned: Option<u64>) -> String {
    let mut out = String::from("<table>\n");
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&v)
        );
    };
    let num = |v: &serde_json::Value, digits: usize| {
        v.as_f64()
            .map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    row(
        &mut out,
        "status",
        s["status"].as_str().unwrap_or("-").to_string(),
    );
    let epochs = match (s["epochs"].as_u64(), planned) {
        (Some(done), Some(planned)) if done < planned => format!("{done} of {planned}"),
        _ => s["epochs"].to_string(),
    };
    row(&mut out, "epochs", epochs);
    row(
        &mut out,
        "loss at initialization",
        format!("{} (ln 10 = 2.3026)", num(&s["initial_loss"], 4)),
    );
    row(
        &mut out,
        "final training loss",
        num(&s["final_training_loss"], 4),
    );
    row(
        &mut out,
        "best validation accuracy",
        num(&s["val_accuracy"], 4),
    );
    if !s["test_accuracy"].is_null() {
        row(&mut out, "test accuracy", num(&s["test_accuracy"], 4));
    }
    row(&mut out, "images per second", num(&s["images_per_sec"], 0));
    row(&mut out, "seconds", num(&s["seconds"], 1));
    out.push_str("</table>\n");
    out
}

fn checks_table(report: &serde_json::Value) -> String {
    let mut out = String::from(
        "<table class=\"checks\">\n<tr><th>check</th><th>verdict</th><th>measured</th><th>expected</th><th>advice</th></tr>\n",
    );
    for c in report["checks"].as_array().into_iter().flatten() {
        let verdict = c["verdict"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"{v}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(c["name"].as_str().unwrap_or("")),
            verdict.to_uppercase(),
            escape(c["measured"].as_str().unwrap_or("")),
            escape(c["expected"].as_str().unwrap_or("")),
            escape(c["advice"].as_str().unwrap_or("")),
            v = escape(verdict)
        );
    }
    out.push_str("</table>\n");
    out
}

/// HTML-escapes `text`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for inlining images.
pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const STYLE: &str = r#"<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1050px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .35rem .6rem; text-align: left; vertical-align: top; font-size: .92rem; }
th { background: #f5f5f5; }
td.pass { color: #1a7f37; font-weight: bold; } td.warn { color: #9a6700; font-weight: bold; } td.fail { color: #cf222e; font-weight: bold; }
ul.warnings li { color: #9a6700; margin: .3rem 0; } ul.notes li { margin: .3rem 0; } p.ok { color: #1a7f37; }
figure { margin: 1.2rem 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; margin-top: .3rem; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .85rem; }
</style>
"#;

const SCRIPT: &str = r#"<script>
(function () {
  var images = Array.prototype.slice.call(document.images);
  function done() {
    var ok = images.every(function (i) { return i.complete && i.naturalWidth > 0; });
    document.body.setAttribute("data-images", ok ? "loaded" : "broken");
    document.body.setAttribute("data-image-count", String(images.length));
  }
  var pending = images.filter(function (i) { return !i.complete; }).length;
  if (pending === 0) { done(); return; }
  images.forEach(function (i) {
    if (!i.complete) {
      i.addEventListener("load", function () { if (--pending === 0) done(); });
      i.addEventListener("error", function () { if (--pending === 0) done(); });
    }
  });
})();
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        // The test vectors of RFC 4648, section 10.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn warnings_and_notes_get_their_own_sections() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path().join("run")).unwrap();
        std::fs::write(run.file("config.json"), "{}").unwrap();
        let summary = serde_json::json!({
            "status": "finished",
            "warnings": ["lower --lr"],
            "notes": ["the 6 weight tensors that feed batch norm turn by 5e-2 < lecture"],
        });
        std::fs::write(run.file("summary.json"), summary.to_string()).unwrap();
        let html = std::fs::read_to_string(write_report(&run).unwrap()).unwrap();
        let warnings = html.find("<h2>Warnings</h2>").expect("a warnings section");
        let notes = html.find("<h2>Notes</h2>").expect("a notes section");
        assert!(warnings < notes);
        assert!(html.contains("<li>lower --lr</li>"));
        assert!(html.contains("turn by 5e-2 &lt; lecture</li>"), "escaped");

        // Without notes there is no empty section.
        let summary = serde_json::json!({ "status": "finished", "warnings": [], "notes": [] });
        std::fs::write(run.file("summary.json"), summary.to_string()).unwrap();
        let html = std::fs::read_to_string(write_report(&run).unwrap()).unwrap();
        assert!(!html.contains("<h2>Notes</h2>"));
        assert!(html.contains("every monitored layer stayed healthy"));
    }

    #[test]
    fn a_run_stopped_early_shows_its_epochs_out_of_the_planned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path().join("run")).unwrap();
        std::fs::write(run.file("config.json"), r#"{"epochs": 10}"#).unwrap();
        let epochs_row = |done: u64| {
            let summary = serde_json::json!({ "status": "paused", "epochs": done });
            std::fs::write(run.file("summary.json"), summary.to_string()).unwrap();
            let html = std::fs::read_to_string(write_report(&run).unwrap()).unwrap();
            let start = html.find("<tr><th>epochs</th><td>").expect("an epochs row");
            html[start..].lines().next().unwrap().to_string()
        };
        assert_eq!(epochs_row(8), "<tr><th>epochs</th><td>8 of 10</td></tr>");
        assert_eq!(epochs_row(10), "<tr><th>epochs</th><td>10</td></tr>");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
