//! `[web]`: the dashboard, the API and `/metrics`.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Run the web server under `up`.
    pub enabled: bool,
    /// Address the map, the pipeline monitor, the API and `/metrics` are served on. Loopback by
    /// default: there is no login, so anyone who can reach another address sees the pipeline.
    pub listen: String,
    /// Topic of quake records shown on the map. Default: the USGS source's topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quakes_topic: Option<String>,
    /// Topic of window results shown as the chart. Default: `window.output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_topic: Option<String>,
    /// Topic of alerts shown in the alerts panel. Default: `alerts.output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts_topic: Option<String>,
    /// Events kept in memory for the map; past this the oldest by origin time are dropped.
    pub max_events: usize,
    /// Window results kept for the chart (the newest windows).
    pub max_windows: usize,
    /// Alerts kept for the alerts panel (the newest).
    pub max_alerts: usize,
    /// Browsers that may hold a live connection (Server-Sent Events) at once; more are answered
    /// 503 until one leaves.
    pub max_live_clients: usize,
    /// Live connections one address (one IP) may hold at once; more are answered 429, so that
    /// one client cannot take every slot. Behind a reverse proxy every browser has the proxy's
    /// address: raise this to `max_live_clients` there.
    pub max_live_per_client: usize,
    /// Connections held open at once (pages, API calls and live streams together). Past this,
    /// new connections wait in the operating system's queue until one closes; each live stream
    /// holds one, so it must be above `max_live_clients`.
    pub max_connections: usize,
    /// Time a client has to send a request's line and headers, counted from the connection (or
    /// from the first byte of a later request on it). A client slower than that is disconnected
    /// without an answer: trickling a byte at a time does not extend it.
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// A connection that sends and receives nothing for this long is closed (keep-alive between
    /// requests, a stalled reader). Live streams send a keep-alive comment at least every half
    /// of it, so open maps stay connected.
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// Host names the server answers besides loopback (`localhost`, `127.0.0.1`, `[::1]`), IP
    /// addresses and the host of `listen`, with any port: `["map.example.org"]`. A request
    /// naming another host gets 421: a web page whose name was made to point at this machine
    /// (DNS rebinding) cannot read the API from a browser. `"*"` answers any name.
    pub allowed_hosts: Vec<String>,
    /// How often the pipeline monitor reads offsets and consumer lag from Kafka.
    #[serde(with = "crate::config::duration")]
    pub refresh: Duration,
    /// An optional online tile layer under the offline country outlines, as a URL template:
    /// `"https://tile.openstreetmap.org/{z}/{x}/{y}.png"`. Empty: outlines only, no request
    /// leaves the machine.
    pub tiles: String,
    /// Attribution shown for the tile layer (the tile provider's terms usually require one).
    pub tiles_attribution: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            quakes_topic: None,
            stats_topic: None,
            alerts_topic: None,
            max_events: 50_000,
            max_windows: 288,
            max_alerts: 200,
            max_live_clients: 64,
            max_live_per_client: 8,
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            allowed_hosts: Vec::new(),
            refresh: Duration::from_secs(5),
            tiles: String::new(),
            tiles_attribution: String::new(),
        }
    }
}

/// The most events, windows or alerts a setting may ask to keep (memory stays bounded).
const MAX_KEPT: usize = 1_000_000;

impl WebConfig {
    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        let port = self.listen.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(format!(
                "listen = {:?}: expected HOST:PORT, like \"127.0.0.1:8080\"",
                self.listen
            ));
        }
        for (name, value) in [
            ("max_events", self.max_events),
            ("max_windows", self.max_windows),
            ("max_alerts", self.max_alerts),
        ] {
            if value == 0 || value > MAX_KEPT {
                return Err(format!("{name} = {value}: expected 1 to {MAX_KEPT}"));
            }
        }
        if self.max_live_clients == 0 || self.max_live_clients > 10_000 {
            return Err(format!(
                "max_live_clients = {}: expected 1 to 10000",
                self.max_live_clients
            ));
        }
        if self.max_live_per_client == 0 || self.max_live_per_client > 10_000 {
            return Err(format!(
                "max_live_per_client = {}: expected 1 to 10000",
                self.max_live_per_client
            ));
        }
        if self.max_connections <= self.max_live_clients || self.max_connections > 100_000 {
            return Err(format!(
                "max_connections = {}: expected more than max_live_clients ({}: each live stream \
                 holds a connection) and at most 100000",
                self.max_connections, self.max_live_clients
            ));
        }
        for (name, value, least) in [
            (
                "header_read_timeout",
                self.header_read_timeout,
                Duration::from_millis(100),
            ),
            ("idle_timeout", self.idle_timeout, Duration::from_secs(1)),
        ] {
            if value < least {
                return Err(format!(
                    "{name} = {:?}: at least {}",
                    humantime::format_duration(value).to_string(),
                    humantime::format_duration(least)
                ));
            }
        }
        for host in &self.allowed_hosts {
            allowed_host(host)?;
        }
        if self.refresh < Duration::from_millis(500) {
            return Err(format!(
                "refresh = {:?}: at least 500ms (each sample asks Kafka for every partition)",
                humantime::format_duration(self.refresh).to_string()
            ));
        }
        self.tile_origin()?;
        Ok(())
    }

    /// The tile server's origin (`https://tile.example.org`), allowed by the page's
    /// Content-Security-Policy; `None` without a tile layer.
    pub fn tile_origin(&self) -> Result<Option<String>, String> {
        if self.tiles.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| format!("tiles = {:?}: {why}", self.tiles);
        if !["{z}", "{x}", "{y}"].iter().all(|p| self.tiles.contains(p)) {
            return Err(bad("expected a URL template with {z}, {x} and {y}"));
        }
        // `{s}` subdomains make the origin a pattern; CSP takes `*.host`.
        let probe = self.tiles.replace("{s}", "a").replace(['{', '}'], "");
        let url = url::Url::parse(&probe).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("expected an http or https URL"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let host = if self.tiles.contains("{s}.") {
            match host.split_once('.') {
                Some((_, rest)) => format!("*.{rest}"),
                None => host.to_string(),
            }
        } else {
            host.to_string()
        };
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Some(format!("{}://{host}{port}", url.scheme())))
    }

    /// The host part of [`WebConfig::listen`]: `map.local` of `map.local:8080`, `[::1]` of
    /// `[::1]:8080`.
    pub fn listen_host(&self) -> &str {
        self.listen
            .rsplit_once(':')
            .map_or(self.listen.as_str(), |(host, _)| host)
    }

    /// Whether [`WebConfig::listen`] is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.listen.parse::<SocketAddr>() {
            Ok(a) => a.ip().is_loopback(),
            Err(_) => self.listen.starts_with("localhost:"),
        }
    }
}

/// Checks one `allowed_hosts` entry: `"*"`, a host name or an IP address, with no scheme and
/// no port (any port is answered).
fn allowed_host(host: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "allowed_hosts: {host:?}: {why} (a name like \"map.example.org\", \
             or \"*\" for any)"
        ))
    };
    if host == "*" || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => bad("not an IPv6 address"),
        };
    }
    if host.contains("://") || host.contains('/') {
        return bad("a host, not a URL");
    }
    if host.contains(':') {
        return bad("no port: every port is answered");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return bad("not a host name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_origins_for_the_csp() {
        let mut c = WebConfig::default();
        assert_eq!(c.tile_origin(), Ok(None));
        c.tiles = "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into();
        assert_eq!(
            c.tile_origin().unwrap().unwrap(),
            "https://tile.openstreetmap.org"
        );
        c.tiles = "https://{s}.tile.example.org:8443/{z}/{x}/{y}.png".into();
        assert_eq!(
            c.tile_origin().unwrap().unwrap(),
            "https://*.tile.example.org:8443"
        );
        c.tiles = "javascript:alert(1)//{z}{x}{y}".into();
        assert!(c.tile_origin().unwrap_err().contains("http or https"));
        c.tiles = "https://tiles.example.org/map.png".into();
        assert!(c.tile_origin().unwrap_err().contains("{z}"));
    }

    #[test]
    fn rejects_settings_that_cannot_work() {
        let ok = WebConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.is_loopback());
        let c = WebConfig {
            listen: "localhost:http".into(),
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("HOST:PORT"));
        let c = WebConfig {
            max_events: 0,
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("max_events = 0"));
        let c = WebConfig {
            refresh: Duration::from_millis(10),
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("refresh"));
        let c = WebConfig {
            listen: "0.0.0.0:8080".into(),
            ..WebConfig::default()
        };
        assert!(!c.is_loopback());
        let c = WebConfig {
            max_connections: 64,
            ..WebConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .contains("more than max_live_clients (64")
        );
        let c = WebConfig {
            max_live_per_client: 0,
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("max_live_per_client"));
        let c = WebConfig {
            header_read_timeout: Duration::ZERO,
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("header_read_timeout"));
    }

    #[test]
    fn allowed_hosts_are_names_without_port() {
        for good in [
            "*",
            "map.example.org",
            "MAP.Example.org.",
            "10.0.0.7",
            "[::1]",
        ] {
            assert_eq!(allowed_host(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("https://map.example.org", "a host, not a URL"),
            ("map.example.org:8080", "no port"),
            ("", "not a host name"),
            ("a..b", "not a host name"),
            ("*.example.org", "not a host name"),
            ("[zz]", "not an IPv6 address"),
        ] {
            let error = allowed_host(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let c = WebConfig {
            allowed_hosts: vec!["map.example.org:443".into()],
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("allowed_hosts"));
    }
}
