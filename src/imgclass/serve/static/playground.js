// The playground: one image (uploaded, dropped or picked from a dataset) sent to the JSON API.
(function () {
  'use strict';
  var image = null;  // the Blob of the current image
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }

  function form(extra) {
    var fd = new FormData();
    fd.append('file', image, image.name || 'upload.png');
    Object.keys(extra || {}).forEach(function (k) { if (extra[k] !== undefined && extra[k] !== null) fd.append(k, extra[k]); });
    return fd;
  }

  async function post(url, fd) {
    var r = await fetch(url, { method: 'POST', body: fd });
    var body = await r.json().catch(function () { return { detail: r.statusText }; });
    if (!r.ok && r.status !== 202) throw new Error(body.detail || ('HTTP ' + r.status));
    return body;
  }

  function bars(top) {
    return top.map(function (t) {
      var pct = (100 * t.probability);
      return '<div class="bar"><span title="' + esc(t.class) + ' (index ' + t.index + ')">' + esc(t.class.split(',')[0]) +
        '</span><span><span class="fill" style="display:block;width:' + pct.toFixed(1) + '%"></span></span>' +
        '<span class="num">' + pct.toFixed(2) + '%</span></div>';
    }).join('');
  }

  function figure(src, caption, cls) {
    return '<figure class="' + (cls || '') + '"><img src="' + src + '" alt="' + esc(caption) + '"><figcaption>' + esc(caption) + '</figcaption></figure>';
  }

  // a long request as a job: post with async=true, poll /api/jobs/ID, show its progress
  async function runJob(url, fd, bar, status) {
    fd.append('async', 'true');
    var job = await post(url, fd);
    bar.hidden = false; bar.value = 0;
    while (true) {
      await new Promise(function (res) { setTimeout(res, 150); });
      var r = await fetch('/api/jobs/' + encodeURIComponent(job.id));
      job = await r.json();
      if (job.progress !== null && job.progress !== undefined) bar.value = job.progress;
      status.textContent = job.status + ': ' + job.forward_passes + ' forward passes' +
        (job.expected_forward_passes ? ' of about ' + job.expected_forward_passes : '') +
        (job.elapsed_s ? ', ' + job.elapsed_s.toFixed(1) + ' s' : '');
      if (job.status === 'done') { bar.value = 1; var res = job.result; delete job.result; res.job = job; return res; }
      if (['error', 'timeout', 'cancelled'].indexOf(job.status) >= 0) { bar.hidden = true; throw new Error(job.error); }
    }
  }

  async function predict() {
    var st = $('predict-status');
    st.textContent = 'predicting…'; st.classList.remove('error');
    try {
      var res = await post('/api/predict', form());
      $('predictions').innerHTML = res.predictions.map(function (p) {
        return '<div class="card prediction" data-model="' + esc(p.model) + '"><h3>' + esc(p.model) + '</h3>' +
          '<p class="top1">top-1: <strong>' + esc(p.top[0].class) + '</strong> (' + (100 * p.top[0].probability).toFixed(2) + '%)</p>' +
          bars(p.top) + '</div>';
      }).join('');
      st.textContent = res.image.width + '×' + res.image.height + ' px image.';
      window.lastPredictions = res.predictions;
      fillTargets();
      ['explain-run', 'attack-run'].forEach(function (id) { $(id).disabled = false; });
      corrupt();
    } catch (e) { st.textContent = e.message; st.classList.add('error'); $('predictions').innerHTML = ''; }
  }

  function fillTargets() {
    var model = document.querySelector('#explain-form [name=model]').value;
    var p = (window.lastPredictions || []).find(function (q) { return q.model === model; });
    var sel = $('explain-target');
    sel.innerHTML = '<option value="">predicted</option>' + (p ? p.top.map(function (t) {
      return '<option value="' + t.index + '">' + esc(t.class.split(',')[0]) + ' (' + (100 * t.probability).toFixed(1) + '%)</option>';
    }).join('') : '');
  }

  async function explain() {
    var f = $('explain-form'), st = $('explain-status'), bar = $('explain-progress');
    st.classList.remove('error'); $('explain-result').innerHTML = '';
    try {
      var r = await runJob('/api/explain', form({ model: f.model.value, method: f.method.value, target: f.target.value }), bar, st);
      $('explain-result').innerHTML = figure(r.input, 'input') +
        figure(r.overlay, r.method + ' for ' + r.target.class.split(',')[0], 'overlay') + figure(r.map, 'map');
      st.textContent = r.method + ' of "' + r.target.class + '" (p=' + r.target.probability.toFixed(3) + ') in ' + r.job.elapsed_s.toFixed(2) + ' s';
    } catch (e) { st.textContent = e.message; st.classList.add('error'); }
  }

  var corruptSeq = 0;
  async function corrupt() {
    if (!image) return;
    var f = $('corrupt-form'), st = $('corrupt-status'), mine = ++corruptSeq;
    $('severity-value').textContent = f.severity.value;
    st.textContent = 'corrupting…'; st.classList.remove('error');
    try {
      var r = await post('/api/corrupt', form({ model: f.model.value, corruption: f.corruption.value, severity: f.severity.value }));
      if (mine !== corruptSeq) return;
      $('corrupt-result').innerHTML = figure(r.input, 'clean') +
        figure(r.image, r.corruption + ', severity ' + r.severity, 'corrupted') +
        '<div class="card" id="corrupt-prediction" data-severity="' + r.severity + '"><h3>on the corrupted image</h3>' + bars(r.top) +
        '<h3>clean</h3>' + bars(r.clean_top) + '</div>';
      st.textContent = r.corruption + ' at severity ' + r.severity + ' (' + r.parameter_set + ' parameters): top-1 ' + r.top[0].class;
    } catch (e) { if (mine === corruptSeq) { st.textContent = e.message; st.classList.add('error'); } }
  }

  async function attack() {
    var f = $('attack-form'), st = $('attack-status'), bar = $('attack-progress');
    st.classList.remove('error'); $('attack-result').innerHTML = '';
    try {
      var r = await runJob('/api/attack', form({ model: f.model.value, attack: f.attack.value, eps: f.eps.value, steps: f.steps.value }), bar, st);
      $('attack-result').innerHTML = figure(r.input, 'clean') + figure(r.adversarial, 'adversarial (eps ' + r.eps + ')') +
        figure(r.perturbation, 'perturbation (scaled)') +
        '<div class="card"><h3>before</h3>' + bars(r.before) + '<h3>after</h3>' + bars(r.after) + '</div>';
      st.textContent = (r.success ? 'fooled: ' : 'not fooled: ') + r.before[0].class + ' → ' + r.after[0].class +
        ' (L∞ ' + r.linf.toFixed(4) + ', ' + r.job.forward_passes + ' forward passes, ' + r.job.elapsed_s.toFixed(2) + ' s)';
    } catch (e) { st.textContent = e.message; st.classList.add('error'); }
  }

  function use(blob, name, info) {
    image = blob; if (name) { try { image.name = name; } catch (e) { /* File names are read-only */ } }
    var url = URL.createObjectURL(blob), img = $('preview');
    img.src = url; img.hidden = false;
    $('image-info').textContent = info || (name || '');
    predict();
  }

  $('file').addEventListener('change', function (e) { var f = e.target.files[0]; if (f) use(f, f.name, f.name); });
  var drop = $('drop');
  ['dragenter', 'dragover'].forEach(function (t) { drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add('over'); }); });
  ['dragleave', 'drop'].forEach(function (t) { drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove('over'); }); });
  drop.addEventListener('drop', function (e) { var f = e.dataTransfer.files[0]; if (f) use(f, f.name, f.name); });
  if ($('dataset-pick')) {
    $('dataset-pick').addEventListener('click', async function () {
      var key = $('dataset').value, i = $('dataset-index').value || 0;
      var r = await fetch('/datasets/' + key + '/' + i + '.png');
      if (!r.ok) { $('image-info').textContent = (await r.json()).detail; return; }
      use(await r.blob(), 'sample-' + i + '.png', (r.headers.get('X-Sample-Id') || ('#' + i)));
    });
  }
  $('explain-run').addEventListener('click', explain);
  $('attack-run').addEventListener('click', attack);
  document.querySelector('#explain-form [name=model]').addEventListener('change', fillTargets);
  ['severity', 'corruption'].forEach(function (id) { $(id).addEventListener('input', corrupt); });
  document.querySelector('#corrupt-form [name=model]').addEventListener('change', corrupt);
})();
