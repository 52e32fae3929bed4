//! The live map and the pipeline monitor, end to end: `quakestream up` against the fake USGS
//! server, a real headless Chromium on the page, and `/metrics` checked against what the
//! topics hold.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::{Spawned, browser::Browser, fixture, free_port, quakestream, read_topic};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::KafkaSettings,
};
use serde_json::Value;

const HOSTILE: &str = "<img src=x onerror=alert(1)>";
const NEW_ID: &str = "qs2025test01";

/// One sample line of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format strictly: every sample belongs to a family declared by `# TYPE`
/// before it, names and labels are well formed, values are numbers, no family is declared
/// twice.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                "TYPE" => {
                    let t = arg.unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{name} declared twice"
                    );
                }
                "HELP" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}")),
            ),
            None => (series, ""),
        };
        assert!(valid_name(name), "bad name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            assert!(valid_name(key), "bad label name in {line:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => panic!("{line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label in {line:?}"),
                }
            };
            map.insert(key.to_string(), value);
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        samples.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one sample {name}{labels:?}, found {found:?}"
    );
    found[0].value
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `check` until it returns `Some`; fails past `limit` with the last state.
async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if std::time::Instant::now() > deadline => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The first poll: a recorded `all_day` feed with a hostile `place` and a `javascript:` link.
fn first_poll() -> Value {
    let mut feed: Value = serde_json::from_slice(&fixture(
        "usgs/revision_sequence_2025-05-04/all_day_2025-05-04T135257Z.json",
    ))
    .unwrap();
    let features = feed["features"].as_array_mut().unwrap();
    features[0]["properties"]["place"] = HOSTILE.into();
    features[1]["properties"]["url"] = "javascript:alert(2)".into();
    feed
}

/// The second poll: the first, plus one new event and a revision of an existing one (a
/// larger magnitude, a later `updated`).
fn second_poll(first: &Value) -> (Value, String, f64) {
    let mut feed = first.clone();
    let features = feed["features"].as_array_mut().unwrap();
    let mut new = features[5].clone();
    new["id"] = NEW_ID.into();
    new["properties"]["ids"] = format!(",{NEW_ID},").into();
    new["properties"]["code"] = "2025test01".into();
    new["properties"]["net"] = "qs".into();
    new["properties"]["mag"] = 3.3.into();
    new["properties"]["place"] = "A brand-new test quake".into();
    new["properties"]["time"] = (new["properties"]["time"].as_i64().unwrap() + 60_000).into();
    new["properties"]["updated"] =
        (new["properties"]["updated"].as_i64().unwrap() + 600_000).into();
    features.insert(0, new);
    let revised = features[10]["id"].as_str().unwrap().to_string();
    features[10]["properties"]["mag"] = 4.2.into();
    features[10]["properties"]["updated"] =
        (features[10]["properties"]["updated"].as_i64().unwrap() + 900_000).into();
    let generated = feed["metadata"]["generated"].as_i64().unwrap() + 60_000;
    feed["metadata"]["generated"] = generated.into();
    (feed, revised, 4.2)
}

fn ids_and_mags(feed: &Value) -> BTreeMap<String, Option<f64>> {
    feed["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["properties"]["mag"].as_f64(),
            )
        })
        .collect()
}

fn revisions(feeds: &[&Value]) -> BTreeSet<(String, i64)> {
    feeds
        .iter()
        .flat_map(|f| f["features"].as_array().unwrap())
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["properties"]["updated"].as_i64().unwrap(),
            )
        })
        .collect()
}

const MARKERS: &str = "document.querySelectorAll('path.quake-marker').length";

/// The rows of the open popup as a person reads them, label then value: `Depth 8.8 km`.
const POPUP_ROWS: &str = "[...document.querySelectorAll('.leaflet-popup-content dl dt')].map(dt => `${dt.textContent} ${dt.nextElementSibling ? dt.nextElementSibling.textContent : ''}`)";

/// Whether `[object` (an element or a list made text) shows anywhere on the page.
const OBJECT_TEXT: &str = "document.body.innerText.includes('[object')";

/// The alert banner is what its `hidden` attribute says, never an empty bar: hidden, it takes
/// no room; shown, it names an alert.
const BANNER_HONEST: &str = "(() => { const b = document.getElementById('banner'); return b.hidden ? getComputedStyle(b).display === 'none' && b.offsetHeight === 0 : document.getElementById('banner-go').textContent.trim() !== ''; })()";

/// The widest horizontal step, in pixels, between consecutive points of the drawn country
/// outlines, and half the map's width. A ring crossing the antimeridian drawn as it is steps
/// from one side of the world to the other: a line across the whole map.
const OUTLINE_STEPS: &str = "(() => { let widest = 0; for (const path of document.querySelectorAll('path.country')) { for (const part of (path.getAttribute('d') || '').split('M').slice(1)) { const xs = part.split('L').map(point => parseFloat(point)); for (let i = 1; i < xs.length; i++) widest = Math.max(widest, Math.abs(xs[i] - xs[i - 1])); } } return { widest, half: document.getElementById('map').clientWidth / 2 }; })()";

/// Markers drawn inside the map's area.
const MARKERS_IN_VIEW: &str = "(() => { const m = document.getElementById('map').getBoundingClientRect(); return [...document.querySelectorAll('path.quake-marker')].filter(p => { const r = p.getBoundingClientRect(); return r.width > 0 && r.right > m.left && r.left < m.right && r.bottom > m.top && r.top < m.bottom; }).length; })()";

/// Waits until the open popup has faded in and the map has panned to show it whole, so that a
/// screenshot shows what a person sees (Leaflet animates both for a quarter of a second).
async fn popup_settled(browser: &Browser) {
    browser
        .wait_for(
            "(() => { const p = document.querySelector('.leaflet-popup'); return !!p && getComputedStyle(p).opacity === '1'; })()",
            Duration::from_secs(5),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Clicks a marker where it is drawn, as a person would (the popup opens at the click).
fn click_marker(selector: &str) -> String {
    format!(
        "(() => {{ const m = document.querySelector({selector:?}); const r = m.getBoundingClientRect(); m.dispatchEvent(new MouseEvent('click', {{ bubbles: true, clientX: r.x + r.width / 2, clientY: r.y + r.height / 2 }})); }})()"
    )
}

/// Asserts that the outlines cross the antimeridian without a line across the map.
fn assert_outlines_unbroken(steps: &Value) {
    let (widest, half) = (
        steps["widest"].as_f64().unwrap(),
        steps["half"].as_f64().unwrap(),
    );
    assert!(
        half > 0.0 && widest < half,
        "a country outline steps {widest}px across a map {}px wide (a band across the map)",
        2.0 * half
    );
}

/// Loads the map and waits until it is ready and shows `markers` events.
async fn open_map(browser: &Browser, base: &str, markers: usize) {
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_for(
            "document.body.dataset.ready === 'true'",
            Duration::from_secs(30),
        )
        .await;
    browser
        .wait_for(&format!("{MARKERS} === {markers}"), Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_map_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web");

    let first = first_poll();
    let (second, revised, revised_mag) = second_poll(&first);
    let fake = FakeServer::start(
        "127.0.0.1:0",
        vec![Step::Json(serde_json::to_vec(&first).unwrap().into())],
    )
    .await
    .unwrap();

    let broker = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{web}");
    let mut up = Spawned::start(quakestream(&data).args([
        "up",
        "--listen",
        &broker,
        "--web",
        &web,
        "--usgs-url",
        &fake.url("/earthquakes/feed/v1.0/summary/all_day.geojson"),
        "--interval",
        "1s",
    ]));
    let banner = up.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(90));
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("web         http://{web}/"))),
        "{banner:#?}"
    );

    let first_events = ids_and_mags(&first);
    eventually(
        Duration::from_secs(60),
        "the map server has the first poll",
        async || {
            // 503 until the monitor's first sample reaches Kafka.
            let (_, body) = get_text(&format!("{base}/health")).await;
            let health: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if health["events"] == first_events.len() && health["caught_up"] == true {
                Ok(())
            } else {
                Err(health.to_string())
            }
        },
    )
    .await;

    // ---- the map, as a person sees it -------------------------------------------------
    let browser = Browser::start(1280, 860).await;
    open_map(&browser, &base, first_events.len()).await;
    // The offline basemap: country outlines drawn from the bundled world-atlas.
    let countries = browser
        .eval("document.querySelectorAll('path.country').length")
        .await;
    assert!(
        countries.as_u64().unwrap() > 100,
        "country outlines drawn: {countries}"
    );
    browser.eval("window.__noReload = 42").await;
    // The outlines of Russia, Fiji and Antarctica cross the antimeridian: no band across the
    // map where they do.
    assert_outlines_unbroken(&browser.eval(OUTLINE_STEPS).await);
    // The alert banner is hidden until an alert arrives: no empty red bar under the header,
    // and a dismissed banner takes no room.
    assert_eq!(
        browser.eval(BANNER_HONEST).await,
        true,
        "the alert banner shows only with an alert in it"
    );
    browser
        .eval("document.getElementById('banner-close').click()")
        .await;
    assert_eq!(
        browser
            .eval("(() => { const b = document.getElementById('banner'); return [b.hidden, getComputedStyle(b).display, b.offsetHeight]; })()")
            .await,
        serde_json::json!([true, "none", 0]),
        "a dismissed banner takes no room"
    );

    // The hostile place is text: in the list, in the popup; no element made from it.
    let hostile_id = first["features"][0]["id"].as_str().unwrap();
    let in_list = browser
        .wait_for(
            &format!("[...document.querySelectorAll('#latest .row-title')].map(e => e.textContent).includes({HOSTILE:?})"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(in_list, true);
    browser
        .eval(&click_marker(&format!(
            "path.quake-marker[data-id=\"{hostile_id}\"]"
        )))
        .await;
    let popup = browser
        .wait_for(
            "document.querySelector('.leaflet-popup-content h3')?.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(popup, HOSTILE);
    // What a person reads in the popup: a label and a value on each row (the rows once read
    // "[object HTMLElement],[object HTMLElement]").
    let hostile = &first["features"][0];
    let props = &hostile["properties"];
    let time_ms = props["time"].as_i64().unwrap();
    let local_time = browser
        .eval(&format!(
            "new Date({time_ms}).toLocaleString(undefined, {{ dateStyle: 'medium', timeStyle: 'medium' }})"
        ))
        .await;
    let expected_rows = [
        format!(
            "Magnitude {:.1} {}",
            props["mag"].as_f64().unwrap(),
            props["magType"].as_str().unwrap()
        ),
        format!(
            "Depth {:.1} km",
            hostile["geometry"]["coordinates"][2].as_f64().unwrap()
        ),
        format!(
            "Time (UTC) {}",
            chrono::DateTime::from_timestamp_millis(time_ms)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S UTC")
        ),
        format!("Local time {}", local_time.as_str().unwrap()),
        format!("Status {}", props["status"].as_str().unwrap()),
    ];
    let rows: Vec<String> = browser
        .eval(POPUP_ROWS)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for row in &expected_rows {
        assert!(rows.contains(row), "popup row {row:?} in {rows:#?}");
    }
    assert_eq!(
        browser.eval(OBJECT_TEXT).await,
        false,
        "no [object …] on the page"
    );
    popup_settled(&browser).await;
    browser.screenshot(&out.join("map-popup.png")).await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('img[src=\"x\"]').length")
            .await,
        0
    );
    // The javascript: URL of another event is not made a link.
    let js_id = first["features"][1]["id"].as_str().unwrap();
    browser
        .eval(&format!(
            "document.querySelector('path.quake-marker[data-id=\"{js_id}\"]').dispatchEvent(new MouseEvent('click', {{ bubbles: true }}))"
        ))
        .await;
    browser
        .wait_for(&format!("document.querySelector('.leaflet-popup-content .popup-id')?.textContent === {js_id:?}"), Duration::from_secs(10))
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('a[href^=\"javascript\"]').length")
            .await,
        0
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('.leaflet-popup-content a').length")
            .await,
        0,
        "no link for a javascript: URL"
    );
    browser
        .eval("document.querySelector('.leaflet-popup-close-button')?.click()")
        .await;

    // ---- a new poll arrives: a new marker and a revision, without a reload -------------
    fake.push([Step::Json(serde_json::to_vec(&second).unwrap().into())]);
    browser
        .wait_for(
            &format!("!!document.querySelector('path.quake-marker[data-id=\"{NEW_ID}\"]')"),
            Duration::from_secs(30),
        )
        .await;
    let all_events = ids_and_mags(&second);
    assert_eq!(browser.eval(MARKERS).await, all_events.len());
    assert_eq!(
        browser.eval("window.__noReload").await,
        42,
        "the page was not reloaded"
    );
    browser
        .wait_for(
            &format!("document.querySelector('path.quake-marker[data-id=\"{revised}\"]').getAttribute('data-mag') === '{revised_mag}'"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('conn').dataset.state")
            .await,
        "live"
    );

    // ---- the magnitude filter hides small events ----------------------------------------
    let big = all_events
        .values()
        .filter(|m| m.is_some_and(|m| m >= 2.5))
        .count();
    assert!(
        big > 0 && big < all_events.len(),
        "the fixture has both sides of M2.5"
    );
    browser
        .eval("(() => { const s = document.getElementById('min-mag'); s.value = '2.5'; s.dispatchEvent(new Event('input', { bubbles: true })); })()")
        .await;
    browser
        .wait_for(&format!("{MARKERS} === {big}"), Duration::from_secs(10))
        .await;
    let shown_mags = browser
        .eval("[...document.querySelectorAll('path.quake-marker')].map(p => Number(p.getAttribute('data-mag')))")
        .await;
    assert!(
        shown_mags
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.as_f64().unwrap() >= 2.5),
        "{shown_mags}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('min-mag-value').textContent")
            .await,
        "M 2.5"
    );
    // Alerts of the M4.5+ events are listed.
    browser
        .wait_for(
            "document.querySelectorAll('#alerts li').length > 0",
            Duration::from_secs(30),
        )
        .await;
    // ---- /metrics agrees with the topics -------------------------------------------------
    let settings = KafkaSettings::for_bootstrap(broker.clone());
    let expected_revisions = revisions(&[&first, &second]);
    let quakes = eventually(
        Duration::from_secs(30),
        "every revision on the topic",
        async || {
            let topic = read_topic(&settings, "earthquakes").await;
            if topic.len() == expected_revisions.len() {
                Ok(topic)
            } else {
                Err(format!("{} of {}", topic.len(), expected_revisions.len()))
            }
        },
    )
    .await;
    assert_eq!(quakes.len(), expected_revisions.len());
    let (stats_topic, alerts_topic, metrics) = eventually(Duration::from_secs(60), "metrics match the topics", async || {
        let stats = read_topic(&settings, "earthquake-stats").await.len() as f64;
        let alerts = read_topic(&settings, "earthquake-alerts").await.len() as f64;
        let (status, text) = get_text(&format!("{base}/metrics")).await;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let m = parse_prometheus(&text);
        let windows = value(&m, "quakestream_window_updates_total", &[]) + value(&m, "quakestream_window_finals_total", &[]);
        let raised: f64 = ["new", "upgrade", "cancel"]
            .iter()
            .map(|k| value(&m, "quakestream_alerts_raised_total", &[("kind", k)]))
            .sum();
        let seen = value(&m, "quakestream_web_records_total", &[("kind", "windows")]);
        if windows == stats && raised == alerts && seen == stats && stats > 0.0 {
            Ok((stats, alerts, m))
        } else {
            Err(format!("windows {windows} / {stats} on the topic (web saw {seen}), alerts {raised} / {alerts}"))
        }
    })
    .await;
    let published = expected_revisions.len() as f64;
    assert_eq!(
        value(
            &metrics,
            "quakestream_source_published_total",
            &[("source", "usgs")]
        ),
        published
    );
    assert_eq!(
        value(
            &metrics,
            "quakestream_web_records_total",
            &[("kind", "quakes")]
        ),
        published
    );
    assert_eq!(
        value(
            &metrics,
            "quakestream_web_records_total",
            &[("kind", "alerts")]
        ),
        alerts_topic
    );
    assert_eq!(
        value(&metrics, "quakestream_web_events", &[]),
        all_events.len() as f64
    );
    assert_eq!(
        value(&metrics, "quakestream_alerts_records_total", &[]),
        published
    );
    assert_eq!(
        value(&metrics, "quakestream_window_records_total", &[]),
        published
    );
    assert_eq!(
        value(&metrics, "quakestream_web_bad_records_total", &[]),
        0.0
    );
    assert!(
        value(
            &metrics,
            "quakestream_source_polls_total",
            &[("source", "usgs")]
        ) >= 2.0
    );
    assert_eq!(
        value(
            &metrics,
            "quakestream_source_origin_to_publish_seconds_count",
            &[("source", "usgs")]
        ),
        published
    );
    assert!(
        value(
            &metrics,
            "quakestream_lake_records_total",
            &[("sink", "files")]
        ) <= published + stats_topic + alerts_topic
    );
    assert_eq!(
        value(&metrics, "quakestream_web_live_clients", &[]),
        1.0,
        "the page follows live updates"
    );
    // The sampled topic offsets, once the sampler has seen the final state.
    eventually(Duration::from_secs(30), "sampled end offsets", async || {
        let m = parse_prometheus(&get_text(&format!("{base}/metrics")).await.1);
        let end = value(
            &m,
            "quakestream_topic_end_offset",
            &[("topic", "earthquakes")],
        );
        if end == published {
            Ok(())
        } else {
            Err(format!("{end} of {published}"))
        }
    })
    .await;

    // The window results reached the chart.
    browser
        .wait_for(
            "document.querySelectorAll('#chart rect.bar').length > 0",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot(&out.join("map.png")).await;

    browser.viewport(390, 844, true).await;
    browser.eval("window.scrollTo(0, 0)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot(&out.join("map-phone.png")).await;
    assert_eq!(
        browser.eval("document.querySelector('.panel').getBoundingClientRect().top >= document.getElementById('map').getBoundingClientRect().bottom - 1").await,
        true,
        "on a phone the panel sits below the map"
    );
    browser.viewport(1280, 860, false).await;

    // ---- a phone, from a fresh load --------------------------------------------------------
    let phone = Browser::start(390, 844).await;
    phone.viewport(390, 844, true).await;
    open_map(&phone, &base, all_events.len()).await;
    // The first view shows where the events are: most of them on the small map.
    let in_view = phone.eval(MARKERS_IN_VIEW).await.as_u64().unwrap() as usize;
    assert!(
        in_view * 2 > all_events.len(),
        "{in_view} of {} markers in the phone's first view",
        all_events.len()
    );
    assert_outlines_unbroken(&phone.eval(OUTLINE_STEPS).await);
    assert_eq!(phone.eval(BANNER_HONEST).await, true, "no empty banner");
    phone
        .eval(&click_marker(&format!(
            "path.quake-marker[data-id=\"{NEW_ID}\"]"
        )))
        .await;
    phone
        .wait_for(
            "document.querySelector('.leaflet-popup-content h3')?.textContent === 'A brand-new test quake'",
            Duration::from_secs(10),
        )
        .await;
    let rows: Vec<String> = phone
        .eval(POPUP_ROWS)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        rows.iter().any(|r| r.starts_with("Magnitude 3.3 "))
            && rows
                .iter()
                .any(|r| r.starts_with("Depth ") && r.ends_with(" km"))
            && rows.iter().any(|r| r.starts_with("Time (UTC) 2025-"))
            && rows.iter().any(|r| r.starts_with("Status ")),
        "{rows:#?}"
    );
    assert_eq!(
        phone.eval(OBJECT_TEXT).await,
        false,
        "no [object …] on the phone"
    );
    popup_settled(&phone).await;
    phone.screenshot(&out.join("map-phone-popup.png")).await;
    assert_eq!(phone.dialogs(), Vec::<String>::new(), "no dialog opened");
    assert_eq!(phone.problems(), Vec::<String>::new());
    drop(phone);

    // ---- the pipeline monitor --------------------------------------------------------------
    browser.goto(&format!("{base}/pipeline")).await;
    browser
        .wait_for(
            &format!("document.querySelector('tr[data-topic=\"earthquakes\"] td:nth-child(4)')?.textContent === '{}'", expected_revisions.len()),
            Duration::from_secs(20),
        )
        .await;
    browser
        .wait_for("!!document.querySelector('tr[data-group=\"quakestream-window\"][data-topic=\"earthquakes\"]')", Duration::from_secs(30))
        .await;
    let source_row = browser
        .eval("document.querySelector('#sources tbody tr td')?.textContent")
        .await;
    assert_eq!(source_row, "usgs");
    assert_eq!(
        browser
            .eval("document.getElementById('kafka-state').textContent")
            .await,
        "up"
    );
    // The throughput chart draws once the page has two samples (one every 2 s).
    let chart = browser
        .wait_for(
            "!!document.querySelector('#rate-chart polyline')",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(chart, true, "the throughput chart is drawn");
    browser.screenshot(&out.join("pipeline.png")).await;

    // ---- nothing left the machine, nothing broke -------------------------------------------
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_for(
            &format!("{MARKERS} === {}", all_events.len()),
            Duration::from_secs(30),
        )
        .await;
    let requests = browser.requests();
    let outside: Vec<&String> = requests
        .iter()
        .filter(|u| !u.starts_with(&base) && !u.starts_with("data:") && *u != "about:blank")
        .collect();
    assert!(
        outside.is_empty(),
        "requests beyond the server: {outside:?}"
    );
    assert!(
        requests
            .iter()
            .any(|u| u.ends_with("/vendor/countries-50m.json"))
    );
    assert_eq!(browser.dialogs(), Vec::<String>::new(), "no dialog opened");
    assert_eq!(
        browser.eval("window.__csp").await,
        serde_json::json!([]),
        "no CSP violation"
    );
    assert_eq!(browser.problems(), Vec::<String>::new());

    // Ctrl+C stops everything, live connections included.
    up.signal("INT");
    let status = up.wait(Duration::from_secs(60));
    assert!(status.success(), "up exited with {status}");
    println!("screenshots in {}", out.display());
}
