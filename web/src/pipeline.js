// The pipeline monitor: /api/pipeline every two seconds, drawn as cards and tables.
'use strict';

(function () {
  const { el, svg, utc, ago, seconds, getJSON, setText, number } = window.qs;
  const history = []; // total messages/s per sample
  const ERROR_WORDS = /(bad|error|failed|dead_letter|late|dropped|rejected)/;

  function fmt(n) {
    return typeof n === 'number' && isFinite(n) ? number.format(n) : '–';
  }

  function rate(r) {
    return typeof r === 'number' ? (r >= 10 ? Math.round(r).toString() : r.toFixed(1)) : '–';
  }

  /** p50 / p95 from the histogram's buckets; past its last bucket (a day) only the mean is known. */
  function delay(d) {
    if (!d || !d.count) return '–';
    const part = (v) => (typeof v === 'number' ? seconds(v) : '> 1 d');
    return `${part(d.p50_s)} / ${part(d.p95_s)} (mean ${seconds(d.mean_s)})`;
  }

  function rows(id, items, emptyId) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren(...items);
    if (emptyId) document.getElementById(emptyId).hidden = items.length > 0;
  }

  function render(p) {
    const up = p.kafka && p.kafka.up;
    setText('kafka-state', up ? 'up' : 'unreachable');
    document.getElementById('kafka-state').dataset.state = up ? 'ok' : 'bad';
    setText('kafka-bootstrap', p.error ? p.error : p.kafka.bootstrap);

    const topics = p.topics || [];
    const total = topics.reduce((s, t) => s + (typeof t.rate === 'number' ? t.rate : 0), 0);
    const known = topics.some((t) => typeof t.rate === 'number');
    setText('throughput', known ? rate(total) : '–');
    if (known) {
      history.push(total);
      if (history.length > 90) history.shift();
    }
    drawRates();

    const groups = p.groups || [];
    setText('total-lag', fmt(groups.reduce((s, g) => s + g.lag, 0)));

    const dlq = topics.find((t) => t.name === p.dlq);
    setText('dlq-count', fmt(dlq ? dlq.end : 0));
    setText('dlq-topic', `topic ${p.dlq}`);
    document.getElementById('dlq-card').dataset.state = dlq && dlq.end > 0 ? 'warn' : 'ok';

    const errors = (p.counters || []).filter((c) => ERROR_WORDS.test(c.name) && c.value > 0);
    setText('error-count', fmt(errors.reduce((s, c) => s + c.value, 0)));
    document.getElementById('errors-card').dataset.state = errors.length ? 'warn' : 'ok';
    document.getElementById('errors-card').title = errors.map((c) => `${c.name}{${c.labels}} ${c.value}`).join('\n');

    setText('map-events', fmt(p.map.events));
    setText('map-fresh', p.map.newest ? `newest origin ${ago(p.map.newest)}` : (p.map.caught_up ? 'topics empty' : 'reading topics…'));

    const components = p.components || [];
    rows('components', components.map((c) => el('tr', { dataset: { component: c.name, state: c.state } },
      el('td', {}, c.name),
      el('td', {}, c.kind),
      el('td', { class: c.state === 'restarting' || c.state === 'failed' || c.failing ? 'warn' : '' },
        c.failing && c.state === 'running' ? 'running, failing' : c.state),
      el('td', { title: utc(c.since_ms) }, ago(c.since_ms)),
      el('td', { class: c.restarts > 0 ? 'num warn' : 'num' }, fmt(c.restarts)),
      el('td', { class: 'error-text', title: c.last_error_at_ms ? utc(c.last_error_at_ms) : '' },
        c.last_error ? c.last_error : '–'))), 'components-empty');

    rows('sources', (p.sources || []).map((s) => el('tr', {},
      el('td', {}, s.source),
      el('td', { title: s.last_success || '' }, s.last_success ? ago(s.last_success) : 'never'),
      el('td', { title: s.feed_generated || '' }, seconds(s.feed_age_s)),
      el('td', {}, delay(s.origin_to_publish)),
      el('td', { class: 'num' }, fmt(s.polls)),
      el('td', { class: 'num' }, fmt(s.published)),
      el('td', { class: 'num' }, fmt(s.duplicates)),
      el('td', { class: s.errors > 0 ? 'num warn' : 'num' }, fmt(s.errors)))), 'sources-empty');

    rows('topics', topics.map((t) => el('tr', { dataset: { topic: t.name } },
      el('td', {}, t.name),
      el('td', { class: 'num' }, fmt(t.partitions.length)),
      el('td', { class: 'num' }, fmt(t.messages)),
      el('td', { class: 'num', title: t.partitions.map((x) => `p${x.id}: ${x.start}…${x.end}`).join('\n') }, fmt(t.end)),
      el('td', { class: 'num' }, rate(t.rate)))));

    rows('groups', groups.map((g) => el('tr', { dataset: { group: g.group, topic: g.topic } },
      el('td', {}, g.group),
      el('td', {}, g.topic),
      el('td', { class: g.lag > 0 ? 'num warn' : 'num' }, fmt(g.lag)),
      el('td', { class: 'parts' }, g.partitions.map((x) =>
        el('span', { class: 'part' }, `p${x.partition} ${x.committed === null ? '–' : fmt(x.committed)} / ${fmt(x.end)}`))))), 'groups-empty');

    rows('counters', (p.counters || []).map((c) => el('tr', {},
      el('td', {}, c.name), el('td', {}, c.labels), el('td', { class: 'num' }, fmt(c.value)))));

    setText('sampled-at', p.sampled_at ? `${utc(p.sampled_at)} (${ago(p.sampled_at)})` : 'not yet');
  }

  function drawRates() {
    const chart = document.getElementById('rate-chart');
    if (history.length < 2) {
      chart.replaceChildren(svg('text', { x: 300, y: 55, 'text-anchor': 'middle', class: 'chart-empty' }, 'Collecting samples…'));
      return;
    }
    const W = 600, H = 100, top = Math.max(1, ...history);
    const step = W / (history.length - 1);
    const points = history.map((v, i) => `${(i * step).toFixed(1)},${(H - 6 - ((H - 16) * v) / top).toFixed(1)}`).join(' ');
    chart.replaceChildren(
      svg('polyline', { points, class: 'rate-line' }),
      svg('text', { x: 4, y: 12, class: 'tick' }, `${rate(top)}/s`));
  }

  async function tick() {
    try {
      render(await getJSON('/api/pipeline'));
      const c = document.getElementById('conn');
      c.dataset.state = 'live';
      c.textContent = 'live';
    } catch (e) {
      const c = document.getElementById('conn');
      c.dataset.state = 'down';
      c.textContent = 'server unreachable';
    }
    document.body.dataset.ready = 'true';
  }

  tick();
  setInterval(tick, 2000);
})();
