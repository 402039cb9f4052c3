// The search page of tempme-serve: a search box (text, or an image/video upload), results as thumbnail cards
// with rank, score and time range, an in-page player that plays a result's moment, and "more like this".
//
// Every text that comes from the server (queries, paths, notes, errors) is put in the page with textContent or
// DOM APIs, never parsed as HTML. Moments play through a W3C media fragment (`/media/ROW#t=START,END`, as the
// static results page does: docs/using-models.md, docs/moments.md); the player also seeks to the start and
// pauses at the end itself, for players that ignore the fragment. With a token (tempme-serve --token) every
// request carries `Authorization: Bearer …`; a <video> or <img> cannot send that header, so thumbnails and
// videos are then fetched with it and shown from blob: URLs.
'use strict';

(() => {
  const TOKEN_KEY = 'tempme-serve-token';
  const $ = (id) => document.getElementById(id);
  const els = {
    stats: $('stats'), tokenForm: $('token-form'), token: $('token'), form: $('search-form'), q: $('q'),
    k: $('k'), go: $('go'), file: $('file'), error: $('error'), player: $('player'), nowPlaying: $('now-playing'),
    playerNote: $('player-note'), video: $('video'), closePlayer: $('close-player'), results: $('results'), title: $('results-title'),
    note: $('results-note'), sub: $('results-sub'), hits: $('hits'),
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    blobs: [],          // blob: URLs of the shown thumbnails (released when the results change)
    mediaBlob: null,    // blob: URL of the video in the player
    moment: null,       // {start, end} of the moment playing; the player pauses at its end once
    request: 0,         // the latest request: answers to older ones are dropped
    playing: 0,         // the latest card played: a video fetched for an earlier click is dropped
  };

  // --- formatting -----------------------------------------------------------------------------------------

  // 75.5 → '1:15.5', 3600 → '1:00:00': as search.clock formats times on the static page
  function clock(seconds) {
    const tenths = Math.round(Math.max(Number(seconds) || 0, 0) * 10);
    const whole = Math.floor(tenths / 10);
    const frac = tenths % 10;
    const h = Math.floor(whole / 3600);
    const m = Math.floor((whole % 3600) / 60);
    const s = whole % 60;
    const pad = (n) => String(n).padStart(2, '0');
    const text = h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
    return frac ? `${text}.${frac}` : text;
  }

  const span = (hit) => `${clock(hit.start)}–${clock(hit.end)}`;

  // The server's URLs are absolute paths (/media/3#t=2,6); resolved against the page, so a page served under
  // a reverse proxy's path prefix (https://host/videos/) reaches /videos/media/3.
  const resolve = (url) => new URL(String(url).replace(/^\//, ''), document.baseURI).href;

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('aria-') || key === 'role' || key === 'tabindex') node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) node.append(child);  // strings become text nodes
    return node;
  }

  // --- errors ---------------------------------------------------------------------------------------------

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = '';
    els.error.hidden = true;
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // The message of an error answer: the server's {"error": "..."}; anything else named by its status.
  async function errorOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      // not JSON: a proxy's page, or a cut connection
    }
    if (body && typeof body.error === 'string') return body.error;
    if (body && body.detail !== undefined) return typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  // --- requests -------------------------------------------------------------------------------------------

  function headers(extra = {}) {
    return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: headers(options.headers), cache: 'no-store' });
    } catch (e) {
      throw new ApiError(`the server did not answer (${e.message})`, 0);
    }
    if (response.status === 401) askForToken();
    if (!response.ok) throw new ApiError(await errorOf(response), response.status);
    try {
      return await response.json();
    } catch (e) {
      throw new ApiError(`the server's answer is not JSON (${e.message})`, response.status);
    }
  }

  // A URL an <img>/<video> can load: the server's own, or with a token the file fetched with it (a blob: URL).
  async function loadable(url) {
    if (!state.token) return url;
    const response = await fetch(url.split('#')[0], { headers: headers() });
    if (!response.ok) throw new ApiError(await errorOf(response), response.status);
    return URL.createObjectURL(await response.blob());
  }

  function askForToken() {
    if (els.tokenForm.hidden) {
      els.tokenForm.hidden = false;
      els.token.focus();
    }
  }

  // --- stats line -----------------------------------------------------------------------------------------

  function showStats(stats) {
    const rows = Number(stats.rows);
    const videos = Number(stats.videos);
    const count = rows === videos ? `${videos} videos` : `${rows} moments of ${videos} videos`;
    const parts = [count];
    if (stats.model_hash) parts.push(`model ${String(stats.model_hash).slice(0, 12)}`);
    if (stats.generation !== undefined && stats.generation !== null) parts.push(`index generation ${stats.generation}`);
    els.stats.textContent = parts.join(' · ');
  }

  // The index line under the title; null, or the error (a 401 opens the token field instead of a message).
  async function loadStats() {
    try {
      showStats(await api('stats'));
      if (state.token) els.tokenForm.hidden = true;
      return null;
    } catch (e) {
      els.stats.textContent = e.status === 401 ? 'this server needs an access token' : '';
      if (e.status !== 401) showError(e.message);
      return e;
    }
  }

  // --- results --------------------------------------------------------------------------------------------

  function releaseThumbnails() {
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
  }

  function thumbnail(hit) {
    const label = `${hit.path} ${span(hit)}`;
    if (!hit.thumbnail) return el('div', { class: 'th none', role: 'img', 'aria-label': label, text: 'no thumbnail' });
    const img = el('img', { class: 'th', alt: label, decoding: 'async', loading: 'lazy', draggable: false });
    img.addEventListener('error', () => img.replaceWith(
      el('div', { class: 'th none', role: 'img', 'aria-label': label, text: 'thumbnail unavailable' })), { once: true });
    loadable(resolve(hit.thumbnail)).then((url) => {
      if (url.startsWith('blob:')) state.blobs.push(url);
      img.src = url;
    }, () => img.dispatchEvent(new Event('error')));
    return img;
  }

  // A path that may wrap after each '/' (a <wbr> there; the text itself stays text nodes).
  function pathText(path) {
    const node = el('span', { class: 'path' });
    String(path).split('/').forEach((part, i) => {
      if (i) node.append('/', el('wbr'));
      node.append(part);
    });
    return node;
  }

  function card(hit) {
    const score = typeof hit.score === 'number' ? hit.score.toFixed(4) : String(hit.score);
    const duration = Number(hit.duration || 0).toFixed(1);
    const like = el('button', { type: 'button', class: 'like', text: 'More like this',
                                title: `search for moments like #${hit.rank}` });
    const meta = el('div', { class: 'meta' },
      el('span', { class: 'rank', text: `#${hit.rank}` }), ' · ', el('span', { class: 'score', text: score }),
      el('br'), pathText(hit.path), ' · ',
      el('span', { class: 'span', text: span(hit) }), ` of ${duration} s`);
    const label = `#${hit.rank}, score ${score}: ${hit.path}, ${span(hit)}`;
    const node = el('div', { class: 'hit', role: 'group', 'aria-label': label }, thumbnail(hit), meta);
    node.dataset.row = hit.row;
    if (hit.error) node.append(el('div', { class: 'miss', text: String(hit.error) }));
    if (hit.media) {  // a folder index: the card plays its moment (click, or Enter/Space when focused)
      node.dataset.media = resolve(hit.media);
      node.tabIndex = 0;
      node.setAttribute('aria-label', `${label}. Enter plays it.`);
      node.addEventListener('click', (event) => {
        if (!like.contains(event.target)) play(hit, node);
      });
      node.addEventListener('keydown', (event) => {
        if (event.target === node && (event.key === 'Enter' || event.key === ' ')) {
          event.preventDefault();
          play(hit, node);
        }
      });
    } else {  // an index of an MDS split names video ids: nothing to play
      node.classList.add('no-media');
      meta.append(el('br'), el('span', { class: 'hint', text: 'a video id of a dataset split: no file to play' }));
    }
    node.append(el('div', { class: 'actions' }, like));
    like.addEventListener('click', () => similar(hit));
    return node;
  }

  function showResults(title, answer, elapsed) {
    releaseThumbnails();
    const hits = Array.isArray(answer.results) ? answer.results : [];
    els.title.textContent = title;
    els.note.textContent = answer.note ? String(answer.note) : '';
    const where = answer.generation !== undefined ? ` · index generation ${answer.generation}` : '';
    els.sub.textContent = `${hits.length} result${hits.length === 1 ? '' : 's'} in ${Math.round(elapsed)} ms${where}`;
    els.hits.replaceChildren(...(hits.length ? hits.map(card) : [el('div', { class: 'empty', text: 'nothing found' })]));
    els.results.hidden = false;
  }

  // Runs one request of the page: the answer of the latest only is shown, errors go to the message line.
  async function run(title, request) {
    const id = ++state.request;
    clearError();
    els.results.setAttribute('aria-busy', 'true');
    els.go.disabled = true;
    const t0 = performance.now();
    try {
      const answer = await request();
      if (id === state.request) showResults(title(answer), answer, performance.now() - t0);
    } catch (e) {
      if (id === state.request) showError(e.message);
    } finally {
      if (id === state.request) {
        els.results.setAttribute('aria-busy', 'false');
        els.go.disabled = false;
      }
    }
  }

  // k as typed: the server checks it and says what it expects (an empty field leaves the server's default)
  const kParam = () => els.k.value.trim();

  function search(query) {
    const params = new URLSearchParams({ q: query });
    if (kParam() !== '') params.set('k', kParam());
    history.replaceState(null, '', `#${params}`);
    return run((a) => `“${a.query ?? query}”`, () => api(`search?${params}`));
  }

  function similar(hit) {
    const params = new URLSearchParams();
    if (kParam() !== '') params.set('k', kParam());
    const query = params.toString() ? `?${params}` : '';
    return run(() => `More like: ${hit.path} · ${span(hit)}`,
      () => api(`similar/${encodeURIComponent(hit.row)}${query}`));
  }

  function upload(file) {
    const kind = file.type.startsWith('image/') ? 'image' : 'video';
    const body = new FormData();
    body.append('file', file, file.name);
    if (kParam() !== '') body.append('k', kParam());
    return run((a) => String(a.query ?? `${kind}: ${file.name}`),
      () => api(`search/${kind}`, { method: 'POST', body }));
  }

  // --- the player -----------------------------------------------------------------------------------------

  async function play(hit, node) {
    if (!hit.media) return;
    const id = ++state.playing;
    clearError();
    for (const other of els.hits.querySelectorAll('.hit.playing')) other.classList.remove('playing');
    node.classList.add('playing');
    els.nowPlaying.textContent = `#${hit.rank} · ${hit.path} · ${span(hit)}`;
    els.playerNote.textContent = '';
    els.player.hidden = false;
    const url = resolve(hit.media);
    const fragment = url.includes('#') ? url.slice(url.indexOf('#')) : '';
    let src = url;
    try {
      if (state.token) src = (await loadable(url)) + fragment;
    } catch (e) {
      if (id === state.playing) els.playerNote.textContent = e.message;
      return;
    }
    if (id !== state.playing) {  // another card was clicked meanwhile
      if (src.startsWith('blob:')) URL.revokeObjectURL(src.split('#')[0]);
      return;
    }
    if (state.mediaBlob) URL.revokeObjectURL(state.mediaBlob);
    state.mediaBlob = src.startsWith('blob:') ? src.split('#')[0] : null;
    state.moment = { start: Number(hit.start) || 0, end: Number(hit.end) || 0, url };
    const video = els.video;
    video.src = src;
    video.scrollIntoView({ block: 'nearest' });
    video.play().catch((e) => {
      if (e.name !== 'AbortError' && !video.error) els.playerNote.textContent = `press play to start (${e.message})`;
    });
  }

  // Starts at the moment's start, if the fragment did not already.
  els.video.addEventListener('loadedmetadata', () => {
    const m = state.moment;
    if (m && els.video.currentTime < m.start - 0.05) els.video.currentTime = m.start;
  });

  // Pauses at the moment's end once; played on from there, the video goes on.
  els.video.addEventListener('timeupdate', () => {
    const m = state.moment;
    if (m && m.end > m.start && els.video.currentTime >= m.end) {
      state.moment = null;
      els.video.pause();
    }
  });

  // A video that does not play: the server's reason (e.g. a file deleted since indexing), else the browser's.
  els.video.addEventListener('error', async () => {
    const m = state.moment;
    const code = els.video.error ? els.video.error.code : 0;
    let message = `the browser cannot play this video (media error ${code})`;
    if (m && m.url) {
      try {
        const response = await fetch(m.url.split('#')[0], { headers: headers({ Range: 'bytes=0-0' }) });
        if (!response.ok) message = await errorOf(response);
      } catch (e) {
        message = `the server did not answer (${e.message})`;
      }
    }
    els.playerNote.textContent = message;
  });

  function stopPlayer() {
    state.playing += 1;
    state.moment = null;
    els.video.pause();
    els.video.removeAttribute('src');
    els.video.load();
    if (state.mediaBlob) URL.revokeObjectURL(state.mediaBlob);
    state.mediaBlob = null;
    els.player.hidden = true;
    for (const other of els.hits.querySelectorAll('.hit.playing')) other.classList.remove('playing');
  }

  els.closePlayer.addEventListener('click', stopPlayer);

  // --- wiring ---------------------------------------------------------------------------------------------

  els.form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = els.q.value.trim();
    if (!query) {
      showError('type what to search for (or choose an image or video file)');
      els.q.focus();
      return;
    }
    search(query);
  });

  els.file.addEventListener('change', () => {
    const file = els.file.files && els.file.files[0];
    if (file) upload(file).finally(() => { els.file.value = ''; });
  });

  els.tokenForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const tried = els.token.value.trim();
    state.token = tried;
    els.token.value = '';
    clearError();
    const error = await loadStats();
    if (error && error.status === 401) state.token = '';
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);  // kept once the server took it
    else sessionStorage.removeItem(TOKEN_KEY);
    if (!error) els.q.focus();
    else if (error.status === 401) {
      showError(tried ? error.message : 'type the token the server was started with (--token)');
      els.token.focus();
    }
  });

  // A search named in the address (#q=...&k=...) runs when the page opens, so a result list can be linked.
  window.addEventListener('DOMContentLoaded', async () => {
    await loadStats();
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get('k')) els.k.value = params.get('k');
    if (params.get('q')) {
      els.q.value = params.get('q');
      search(params.get('q'));
    }
  });
})();
