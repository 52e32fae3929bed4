// The live earthquake map: markers from /api/quakes, kept current by Server-Sent Events from
// /api/events (a revision moves or restyles its marker, a deletion removes it), statistics of
// what is in view, filters, the latest window results as a chart, and the alerts panel.
'use strict';

(function () {
  const { el, svg, mag, utc, local, ago, safeUrl, getJSON, setText, number } = window.qs;

  /** Magnitude classes, largest first: the legend, the colors and the sizes. */
  const CLASSES = [
    { min: 6, color: '#67000d', label: '6 and above' },
    { min: 5, color: '#cb181d', label: '5 – 6' },
    { min: 4, color: '#f16913', label: '4 – 5' },
    { min: 2.5, color: '#fdae6b', label: '2.5 – 4' },
    { min: -Infinity, color: '#6baed6', label: 'below 2.5' },
  ];
  const UNKNOWN = { color: '#969696', label: 'no magnitude' };
  const RANGES = { all: null, '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
  const HOUR = 3600e3;

  const state = {
    config: null,
    seq: 0,
    quakes: new Map(), // id → Quake
    markers: new Map(), // id → L.CircleMarker
    windows: new Map(), // window key → result
    alerts: [], // newest first
    alertKeys: new Set(),
    minMag: null,
    rangeMs: null,
    loaded: false,
  };
  let map = null;
  let layer = null;
  let source = null;
  let renderQueued = false;

  function classOf(m) {
    if (typeof m !== 'number') return UNKNOWN;
    return CLASSES.find((c) => m >= c.min);
  }

  function radiusOf(m) {
    if (typeof m !== 'number') return 3;
    return Math.max(3, 2 + Math.pow(Math.max(m, 0), 1.6) * 1.15);
  }

  function styleOf(q) {
    const c = classOf(q.mag);
    return {
      radius: radiusOf(q.mag),
      color: '#1b1b1b',
      weight: 0.6,
      opacity: 0.9,
      fillColor: c.color,
      fillOpacity: q.status === 'reviewed' ? 0.85 : 0.6,
      dashArray: q.status === 'reviewed' ? null : '2 2',
    };
  }

  function passes(q, now) {
    if (state.minMag !== null && !(typeof q.mag === 'number' && q.mag >= state.minMag)) return false;
    if (state.rangeMs !== null && !(new Date(q.time).getTime() >= now - state.rangeMs)) return false;
    return true;
  }

  // ---- the map -------------------------------------------------------------------------

  /** Where people live, Antarctica left out: the first view when there are no events. */
  const LAND = [[-56, -180], [84, 180]];

  async function initMap() {
    if (typeof window.L === 'undefined') return false;
    map = L.map('map', { worldCopyJump: true, minZoom: 0, maxZoom: 12, zoomSnap: 0.25 });
    fillWorld();
    map.fitBounds(LAND, { animate: false });
    map.on('resize', fillWorld);
    map.attributionControl.setPrefix(false);
    map.createPane('quakes').style.zIndex = 450;
    const cfg = state.config;
    if (cfg.tiles) {
      L.tileLayer(cfg.tiles, { attribution: cfg.tiles_attribution || '', maxZoom: 18 }).addTo(map);
    }
    layer = L.layerGroup().addTo(map);
    legend().addTo(map);
    map.on('moveend', () => {
      wrapMarkers();
      queueRender();
    });
    try {
      const topo = await getJSON('/vendor/countries-50m.json');
      const { fills, outlines } = basemap(topojson.feature(topo, topo.objects.countries));
      // Over a tile layer only the outlines are drawn; offline the land is filled too.
      if (!cfg.tiles) {
        L.geoJSON(fills, {
          interactive: false,
          style: { className: 'land', stroke: false, fillColor: '#eef2ee', fillOpacity: 1 },
        }).addTo(map);
      }
      L.geoJSON(outlines, {
        interactive: false,
        style: { className: 'country', color: '#7b93a8', weight: 0.6, fill: false },
      }).addTo(map);
      map.attributionControl.addAttribution('Outlines: Natural Earth (world-atlas)');
    } catch (e) {
      notice(`The country outlines could not be loaded (${e.message}).`);
    }
    return true;
  }

  /**
   * Sets the smallest zoom to the one at which the world just covers the map area (at zoom z
   * the Mercator world is a square of 256·2^z pixels), so zooming out never leaves empty space
   * around it. A map zoomed all the way out stays so when its size changes.
   */
  function fillWorld() {
    const size = map.getSize();
    const least = Math.max(0, Math.log2(Math.max(size.x, size.y, 1) / 256));
    const allOut = map.getZoom() <= map.getMinZoom() + 0.01;
    map.setMinZoom(least);
    if (allOut && map.getZoom() !== least) map.setZoom(least, { animate: false });
  }

  // ---- the offline basemap -------------------------------------------------------------
  // world-atlas describes the countries on a sphere: a ring may step across the antimeridian
  // (from 179.9° to -180°), and Antarctica is the area between its coast and a ring around the
  // South Pole. Drawn flat as they are, those steps become lines and bands across the whole
  // map. So the land is filled from rings made continuous in longitude (closed along the pole
  // when they go around it), and the outlines are lines cut at each step, without the pole
  // ring, which is no coast. Both are drawn three times, 360° apart, so that the land goes on
  // past ±180° as far as the map can show before worldCopyJump brings it back.

  /** Where the world is drawn again: the view's center stays within ±180° (worldCopyJump). */
  const COPIES = [-360, 0, 360];

  /** Beyond this latitude a ring runs along a polar cap, not along a coast. */
  const POLAR = 89.9;

  /** The same ring with longitudes made continuous: no step is wider than 180°. */
  function unwrap(ring) {
    const out = [];
    for (const [lon, lat] of ring) {
      if (!out.length) {
        out.push([lon, lat]);
        continue;
      }
      const prev = out[out.length - 1][0];
      const step = ((((lon - prev) % 360) + 540) % 360) - 180;
      out.push([prev + step, lat]);
    }
    return out;
  }

  /** Points moved `by` degrees of longitude. */
  function moved(points, by) {
    return by ? points.map(([lon, lat]) => [lon + by, lat]) : points;
  }

  /** The flat polygon filling one polygon of the sphere (its outer ring, then its holes). */
  function fillPolygon(rings) {
    const kept = rings.filter((ring) => ring.some(([, lat]) => Math.abs(lat) < POLAR)).map(unwrap);
    if (!kept.length) return null;
    const ref = kept[0][0][0];
    return kept.map((ring) => {
      const first = ring[0][0];
      const last = ring[ring.length - 1][0];
      let out = ring;
      if (Math.abs(last - first) > 180) {
        // It goes around a pole: close it along the pole (Mercator stops at ±85°).
        const pole = ring.reduce((sum, [, lat]) => sum + lat, 0) < 0 ? -90 : 90;
        out = ring.concat([[last, pole], [first, pole]]);
      }
      // A hole stays on the same side of the antimeridian as its outer ring.
      return moved(out, -360 * Math.round((first - ref) / 360));
    });
  }

  /** The coast or borders of one ring as lines, cut where it steps across the antimeridian. */
  function outlineLines(ring, lines) {
    let line = [];
    ring.forEach(([lon, lat], i) => {
      const prev = i > 0 ? ring[i - 1] : null;
      if (prev && Math.abs(lat) >= POLAR && Math.abs(prev[1]) >= POLAR) {
        // Along a polar cap: no line.
        if (line.length > 1) lines.push(line);
        line = [];
      } else if (prev && Math.abs(lon - prev[0]) > 180) {
        // Across the antimeridian: end at the side it leaves, go on from the side it enters.
        const side = prev[0] > 0 ? 180 : -180;
        const across = lon + 2 * side - prev[0];
        const t = across === 0 ? 0 : (side - prev[0]) / across;
        const at = prev[1] + t * (lat - prev[1]);
        line.push([side, at]);
        if (line.length > 1) lines.push(line);
        line = [[-side, at]];
      }
      line.push([lon, lat]);
    });
    if (line.length > 1) lines.push(line);
  }

  /** The country fills (MultiPolygons) and outlines (MultiLineStrings) to draw flat. */
  function basemap(countries) {
    const fills = [];
    const outlines = [];
    for (const feature of countries.features) {
      const g = feature.geometry;
      if (!g) continue;
      const polygons = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
      const areas = [];
      const lines = [];
      for (const rings of polygons) {
        const area = fillPolygon(rings);
        if (area) areas.push(area);
        for (const ring of rings) outlineLines(ring, lines);
      }
      const properties = feature.properties || {};
      if (areas.length) {
        const coordinates = COPIES.flatMap((by) => areas.map((area) => area.map((ring) => moved(ring, by))));
        fills.push({ type: 'Feature', properties, geometry: { type: 'MultiPolygon', coordinates } });
      }
      if (lines.length) {
        const coordinates = COPIES.flatMap((by) => lines.map((line) => moved(line, by)));
        outlines.push({ type: 'Feature', properties, geometry: { type: 'MultiLineString', coordinates } });
      }
    }
    return {
      fills: { type: 'FeatureCollection', features: fills },
      outlines: { type: 'FeatureCollection', features: outlines },
    };
  }

  function legend() {
    const control = L.control({ position: 'bottomleft' });
    control.onAdd = () => {
      const rows = CLASSES.concat([UNKNOWN]).map((c) =>
        el('li', {},
          el('span', { class: 'dot', style: null, dataset: { color: c.color } }),
          c.label));
      const box = el('div', { class: 'legend' },
        el('strong', {}, 'Magnitude'),
        el('ol', {}, rows),
        el('p', {}, 'Dashed: not yet reviewed'));
      // Colors through the CSSOM: the CSP allows no inline style attributes.
      box.querySelectorAll('.dot').forEach((d) => { d.style.background = d.dataset.color; });
      L.DomEvent.disableClickPropagation(box);
      return box;
    };
    return control;
  }

  function popupOf(id) {
    const q = state.quakes.get(id);
    if (!q) return el('div', {}, 'This event is no longer on the map.');
    const rows = [
      ['Magnitude', `${mag(q.mag)}${q.mag_type ? ' ' + q.mag_type : ''}`],
      ['Depth', `${typeof q.depth_km === 'number' ? q.depth_km.toFixed(1) : '?'} km`],
      ['Time (UTC)', utc(q.time)],
      ['Local time', local(q.time)],
      ['Status', q.status],
      ['Updated', utc(q.updated)],
    ];
    if (q.alert) rows.push(['PAGER', q.alert]);
    if (q.tsunami) rows.push(['Tsunami', 'flag set']);
    if (typeof q.felt === 'number') rows.push(['Felt reports', number.format(q.felt)]);
    const link = safeUrl(q.url);
    return el('div', { class: 'popup' },
      el('h3', {}, q.place || q.title || q.id),
      el('dl', {}, rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      link ? el('a', { href: link, target: '_blank', rel: 'noopener noreferrer' }, 'Event page ↗') : null,
      el('p', { class: 'popup-id' }, q.id));
  }

  /**
   * Where an event's marker goes: in the copy of the world nearest the view's center, the one
   * the basemap shows there, so a map centered on the Pacific has its events on both sides.
   */
  function placeOf(q) {
    const center = map ? map.getCenter().lng : 0;
    return [q.lat, q.lon + 360 * Math.round((center - q.lon) / 360)];
  }

  function wrapMarkers() {
    for (const [id, marker] of state.markers) {
      const q = state.quakes.get(id);
      const place = placeOf(q);
      if (marker.getLatLng().lng !== place[1]) marker.setLatLng(place);
    }
  }

  function upsert(q) {
    state.quakes.set(q.id, q);
    if (!layer) return;
    let marker = state.markers.get(q.id);
    const style = styleOf(q);
    if (!marker) {
      marker = L.circleMarker(placeOf(q), Object.assign({ pane: 'quakes', className: 'quake-marker' }, style));
      const id = q.id;
      marker.bindPopup(() => popupOf(id), { maxWidth: 300, autoPanPaddingTopLeft: [52, 10] });
      marker.on('add', () => tag(marker, id));
      state.markers.set(q.id, marker);
    } else {
      marker.setLatLng(placeOf(q));
      marker.setStyle(style);
      marker.setRadius(style.radius);
      if (marker.isPopupOpen()) marker.setPopupContent(popupOf(q.id));
    }
    show(marker, passes(q, Date.now()));
    tag(marker, q.id);
  }

  /** Marks a marker's SVG element with its event, for people's tools and for tests. */
  function tag(marker, id) {
    const node = marker.getElement && marker.getElement();
    if (!node) return;
    const q = state.quakes.get(id);
    node.setAttribute('data-id', id);
    node.setAttribute('data-mag', q && typeof q.mag === 'number' ? q.mag : '');
  }

  function show(marker, visible) {
    if (visible && !layer.hasLayer(marker)) layer.addLayer(marker);
    if (!visible && layer.hasLayer(marker)) layer.removeLayer(marker);
  }

  function remove(id) {
    state.quakes.delete(id);
    const marker = state.markers.get(id);
    if (marker) {
      layer.removeLayer(marker);
      state.markers.delete(id);
    }
  }

  function refilter() {
    const now = Date.now();
    for (const [id, marker] of state.markers) show(marker, passes(state.quakes.get(id), now));
    queueRender();
  }

  // ---- panels --------------------------------------------------------------------------

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      renderStats();
      renderLatest();
      renderChart();
      renderAlerts();
    });
  }

  function visibleQuakes() {
    const now = Date.now();
    const out = [];
    for (const q of state.quakes.values()) if (passes(q, now)) out.push(q);
    return out;
  }

  function renderStats() {
    const shown = visibleQuakes();
    const bounds = map ? map.getBounds() : null;
    const inView = bounds
      ? shown.filter((q) => bounds.contains([q.lat, q.lon]) || bounds.contains([q.lat, q.lon + 360]) || bounds.contains([q.lat, q.lon - 360]))
      : shown;
    const mags = inView.map((q) => q.mag).filter((m) => typeof m === 'number');
    setText('stat-count', number.format(inView.length));
    setText('stat-max', mags.length ? `M ${Math.max(...mags).toFixed(1)}` : '–');
    setText('stat-avg', mags.length ? `M ${(mags.reduce((a, b) => a + b, 0) / mags.length).toFixed(2)}` : '–');
    const now = Date.now();
    setText('stat-hour', number.format(shown.filter((q) => new Date(q.time).getTime() >= now - HOUR).length));
    const hidden = state.quakes.size - shown.length;
    setText('filter-hint', hidden > 0 ? `${number.format(hidden)} of ${number.format(state.quakes.size)} events hidden by the filters.` : `${number.format(state.quakes.size)} events received.`);
  }

  function renderLatest() {
    const list = document.getElementById('latest');
    const items = visibleQuakes()
      .sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0))
      .slice(0, 12)
      .map((q) => el('li', {},
        el('button', { type: 'button', class: 'row', onclick: () => focus(q.id) },
          badge(q.mag),
          el('span', { class: 'row-main' },
            el('span', { class: 'row-title' }, q.place || q.title || q.id),
            el('span', { class: 'row-sub' }, `${utc(q.time)} · ${ago(q.time)} · ${q.depth_km.toFixed(0)} km deep`)))));
    list.replaceChildren(...items);
    document.getElementById('latest-empty').hidden = items.length > 0;
  }

  function badge(m) {
    const b = el('span', { class: 'badge' }, mag(m));
    b.style.background = classOf(m).color;
    b.style.color = typeof m === 'number' && m >= 4 ? '#fff' : '#111';
    return b;
  }

  function focus(id) {
    const q = state.quakes.get(id);
    const marker = state.markers.get(id);
    if (!q || !map) return;
    map.flyTo(placeOf(q), Math.max(map.getZoom(), 5), { duration: 0.6 });
    if (marker && layer.hasLayer(marker)) marker.openPopup();
  }

  /** The charted value of a window: the count when there is one, else the first number. */
  function measureOf(w) {
    if (typeof w.count === 'number') return ['count', w.count];
    for (const [k, v] of Object.entries(w)) {
      if (typeof v === 'number' && !['window_start', 'window_end'].includes(k)) return [k, v];
    }
    return ['value', 0];
  }

  function renderChart() {
    const chart = document.getElementById('chart');
    const windows = [...state.windows.values()]
      .sort((a, b) => (a.window_start < b.window_start ? -1 : 1))
      .slice(-24);
    if (!windows.length) {
      chart.replaceChildren(svg('text', { x: 170, y: 64, 'text-anchor': 'middle', class: 'chart-empty' }, 'No window results yet'));
      setText('windows-caption', '');
      return;
    }
    const [name] = measureOf(windows[windows.length - 1]);
    const values = windows.map((w) => measureOf(w)[1]);
    const top = Math.max(1, ...values);
    const W = 340, H = 120, left = 26, bottom = 18, gap = 2;
    const bw = (W - left) / windows.length;
    const nodes = [
      svg('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }),
      svg('text', { x: left - 4, y: 10, 'text-anchor': 'end', class: 'tick' }, String(top)),
      svg('text', { x: left - 4, y: H - bottom, 'text-anchor': 'end', class: 'tick' }, '0'),
    ];
    windows.forEach((w, i) => {
      const v = values[i];
      const h = ((H - bottom - 12) * v) / top;
      const x = left + i * bw + gap / 2;
      const start = new Date(w.window_start);
      const end = new Date(w.window_end);
      const label = `${utc(w.window_start)} – ${isNaN(end) ? '?' : utc(w.window_end).slice(11)}: ${name} ${v}` +
        (typeof w.max_mag === 'number' ? `, max M ${w.max_mag.toFixed(1)}` : '') +
        (typeof w.avg_mag === 'number' ? `, avg M ${w.avg_mag.toFixed(2)}` : '') +
        (w.final ? ' (final)' : ' (still open)');
      nodes.push(svg('rect', {
        x, y: H - bottom - h, width: Math.max(1, bw - gap), height: Math.max(0.5, h),
        class: w.final ? 'bar final' : 'bar open',
      }, svg('title', {}, label)));
      if (i === 0 || i === windows.length - 1) {
        const hh = `${String(start.getUTCHours()).padStart(2, '0')}:${String(start.getUTCMinutes()).padStart(2, '0')}`;
        nodes.push(svg('text', { x: x + (bw - gap) / 2, y: H - 4, 'text-anchor': i === 0 ? 'start' : 'end', class: 'tick' }, hh));
      }
    });
    chart.replaceChildren(...nodes);
    setText('windows-caption', `${name} per window, UTC`);
  }

  function alertKey(a) {
    return `${a.quake && a.quake.id}|${a.kind}|${a.emitted_at}`;
  }

  function addAlert(a, fresh) {
    const key = alertKey(a);
    if (state.alertKeys.has(key)) return;
    state.alertKeys.add(key);
    state.alerts.unshift(a);
    state.alerts.sort((x, y) => (x.emitted_at < y.emitted_at ? 1 : -1));
    if (state.alerts.length > 50) state.alerts.length = 50;
    if (fresh) banner(a);
  }

  function alertTitle(a) {
    const q = a.quake || {};
    const kind = { new: 'New alert', upgrade: 'Alert upgraded', cancel: 'Alert cancelled' }[a.kind] || 'Alert';
    return `${kind}: M ${mag(q.mag)} · ${q.place || q.title || q.id || 'unknown place'}`;
  }

  function renderAlerts() {
    const list = document.getElementById('alerts');
    const items = state.alerts.slice(0, 15).map((a) => {
      const q = a.quake || {};
      return el('li', { class: `alert alert-${a.kind}` },
        el('button', { type: 'button', class: 'row', onclick: () => focus(q.id) },
          el('span', { class: 'kind' }, String(a.kind || '').toUpperCase()),
          el('span', { class: 'row-main' },
            el('span', { class: 'row-title' }, `M ${mag(q.mag)} · ${q.place || q.title || q.id || '?'}`),
            el('span', { class: 'row-sub' }, `${a.reason || ''} · ${ago(a.emitted_at)}`))));
    });
    list.replaceChildren(...items);
    document.getElementById('alerts-empty').hidden = items.length > 0;
  }

  let bannerAlert = null;
  function banner(a) {
    bannerAlert = a;
    const b = document.getElementById('banner');
    b.dataset.kind = a.kind;
    document.getElementById('banner-go').textContent = alertTitle(a);
    b.hidden = false;
  }

  function notice(text) {
    const n = document.getElementById('notice');
    n.textContent = text;
    n.hidden = false;
  }

  function connection(stateName, text) {
    const c = document.getElementById('conn');
    c.dataset.state = stateName;
    c.textContent = text;
  }

  // ---- data ----------------------------------------------------------------------------

  async function loadAll() {
    const [list, stats, alerts] = await Promise.all([
      getJSON(`/api/quakes?limit=${state.config.max_list}`),
      getJSON('/api/stats'),
      getJSON('/api/alerts?limit=50'),
    ]);
    // Follow from the oldest of the three: a change seen twice is harmless (upserts).
    state.seq = Math.min(list.seq, stats.seq);
    const keep = new Set(list.quakes.map((q) => q.id));
    for (const id of [...state.quakes.keys()]) if (!keep.has(id)) remove(id);
    for (const q of list.quakes) upsert(q);
    state.windows.clear();
    for (const w of stats.windows) state.windows.set(windowKey(w), w);
    for (const a of alerts.alerts.slice().reverse()) addAlert(a, false);
    if (!state.loaded && map && list.quakes.length) {
      // The first view shows where the events are (the whole world for a global feed).
      const bounds = L.latLngBounds(list.quakes.map((q) => [q.lat, q.lon]));
      map.fitBounds(bounds.pad(0.1), { maxZoom: 6, animate: false });
    }
    state.loaded = true;
    if (list.matched > list.quakes.length) {
      notice(`Showing the newest ${number.format(list.quakes.length)} of ${number.format(list.matched)} events.`);
    }
    queueRender();
  }

  function windowKey(w) {
    const groups = Object.entries(w)
      .filter(([k, v]) => typeof v === 'string' && !['window_start', 'window_end', 'emitted_at'].includes(k))
      .map(([k, v]) => `${k}=${v}`);
    return [w.window_start].concat(groups).join('|');
  }

  function follow() {
    if (source) source.close();
    source = new EventSource(`/api/events?since=${state.seq}`);
    const track = (e) => {
      const seq = Number(e.lastEventId);
      if (seq > state.seq) state.seq = seq;
    };
    source.addEventListener('open', () => connection('live', 'live'));
    source.addEventListener('error', () => connection('reconnecting', 'reconnecting…'));
    source.addEventListener('quake', (e) => { track(e); upsert(JSON.parse(e.data)); queueRender(); });
    source.addEventListener('remove', (e) => { track(e); remove(JSON.parse(e.data).id); queueRender(); });
    source.addEventListener('window', (e) => {
      track(e);
      const w = JSON.parse(e.data);
      state.windows.set(windowKey(w), w);
      queueRender();
    });
    source.addEventListener('alert', (e) => { track(e); addAlert(JSON.parse(e.data), true); queueRender(); });
    source.addEventListener('resync', async () => {
      source.close();
      connection('reconnecting', 'catching up…');
      try {
        await loadAll();
      } finally {
        follow();
      }
    });
  }

  async function start() {
    try {
      state.config = await getJSON('/api/config');
    } catch (e) {
      connection('down', 'offline');
      notice(`The dashboard cannot reach its server (${e.message}).`);
      return;
    }
    if (state.config.missing_assets && state.config.missing_assets.length) {
      notice(`This build of quakestream has no map library (${state.config.missing_assets.join(', ')} missing): ` +
        'npm was not available when it was compiled. Install npm and rebuild (cargo build --release). ' +
        'The lists and statistics below still work.');
    }
    await initMap();
    document.getElementById('min-mag').addEventListener('input', (e) => {
      const v = Number(e.target.value);
      state.minMag = v < 0 ? null : v;
      setText('min-mag-value', state.minMag === null ? 'any' : `M ${state.minMag.toFixed(1)}`);
      refilter();
    });
    document.getElementById('range').addEventListener('change', (e) => {
      state.rangeMs = RANGES[e.target.value] === undefined ? null : RANGES[e.target.value];
      refilter();
    });
    document.getElementById('banner-close').addEventListener('click', () => {
      document.getElementById('banner').hidden = true;
    });
    document.getElementById('banner-go').addEventListener('click', () => {
      if (bannerAlert && bannerAlert.quake) focus(bannerAlert.quake.id);
    });
    try {
      await loadAll();
    } catch (e) {
      notice(`Loading the events failed (${e.message}); retrying through the live connection.`);
    }
    follow();
    // Ages ("5 min ago") and the time filter move with the clock.
    setInterval(refilter, 30e3);
    document.body.dataset.ready = 'true';
  }

  start();
})();
