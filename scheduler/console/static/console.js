// nbfleet console: what the pages do without, done better with a little script.
// - an element with data-refresh="N" data-fragment="F" is fetched again (?fragment=F) every
//   N seconds (the notebook list's rows, a notebook's summary);
// - forms with data-confirm ask first;
// - the run form's CLI command follows the form (?fragment=command), with a Copy button.
'use strict';

function refreshPart(body) {
  const every = Number(body.dataset.refresh) * 1000;
  const tick = async () => {
    if (body.contains(document.activeElement) && document.activeElement !== body) {
      // Someone is on a button or a field in there (a keyboard user): do not pull it away.
      window.setTimeout(tick, every);
      return;
    }
    const url = new URL(window.location.href);
    url.searchParams.set('fragment', body.dataset.fragment);
    try {
      const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
      if (response.status === 401) { window.location.assign('/console/sign-in'); return; }
      if (response.ok) body.innerHTML = await response.text();
    } catch (error) {
      // The scheduler is unreachable for a moment: keep what is shown, try again.
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

function confirmForms() {
  document.addEventListener('submit', (event) => {
    const question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
}

function followCommand(form) {
  const shown = document.getElementById('cli-command');
  const copy = document.getElementById('copy-command');
  let pending = null;
  const update = async () => {
    const query = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (key !== 'csrf') query.append(key, value);
    }
    query.set('fragment', 'command');
    const response = await fetch('/console/notebooks/new?' + query, { credentials: 'same-origin' });
    if (response.ok) shown.textContent = await response.text();
  };
  form.addEventListener('input', () => {
    window.clearTimeout(pending);
    pending = window.setTimeout(update, 200);
  });
  if (copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener('click', () => navigator.clipboard.writeText(shown.textContent));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  for (const part of document.querySelectorAll('[data-refresh][data-fragment]')) refreshPart(part);
  confirmForms();
  const form = document.getElementById('run-form');
  if (form) followCommand(form);
});

// A notebook's output: the last lines, then (data-follow="yes") followed as they come.
async function showLogs(pre) {
  const url = pre.dataset.logs;
  const follow = pre.dataset.follow === 'yes';
  try {
    const response = await fetch(url + (follow ? '?follow=1' : ''), { credentials: 'same-origin' });
    if (!response.ok) { pre.textContent = `(no output: ${response.status} ${await response.text()})`; return; }
    if (!follow || !response.body) { pre.textContent = await response.text() || '(no output yet)'; return; }
    pre.textContent = '';
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += decoder.decode(value, { stream: true });
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  } catch (error) {
    pre.textContent += '\n(the output stream ended: reload to see more)';
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const pre = document.getElementById('logs');
  if (pre) showLogs(pre);
});
