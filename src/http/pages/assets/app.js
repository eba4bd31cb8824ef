// keygate pages: dialogs, confirmations, the edit form's live check and the key reveal.
// Loaded from /static/app.js (the Content-Security-Policy allows no inline script).
(function () {
  'use strict';

  function byId(id) { return document.getElementById(id); }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute('content') : '';
  }

  function openDialog(dialog) {
    if (!dialog) { return; }
    if (typeof dialog.showModal === 'function') {
      if (!dialog.open) { dialog.showModal(); }
    } else {
      dialog.setAttribute('open', '');
    }
    var focus = dialog.querySelector('[autofocus]');
    if (focus) { focus.focus(); }
  }

  // Buttons that open a dialog, and buttons that close the dialog they are in.
  document.addEventListener('click', function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) { return; }
    var opener = target.closest('[data-open-dialog]');
    if (opener) {
      event.preventDefault();
      openDialog(byId(opener.getAttribute('data-open-dialog')));
      return;
    }
    var closer = target.closest('[data-close-dialog]');
    if (closer) {
      event.preventDefault();
      var dialog = closer.closest('dialog');
      if (dialog) { dialog.close(); }
    }
  });

  // A dialog the server wants open (e.g. the edit dialog with the server's message).
  document.querySelectorAll('dialog[data-open-on-load]').forEach(openDialog);

  // Forms that need a confirmation: the shared dialog asks, Ok sends the form.
  var confirmDialog = byId('confirm-dialog');
  var pendingForm = null;
  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      if (!confirmDialog) { return; }
      event.preventDefault();
      pendingForm = form;
      byId('confirm-text').textContent = form.getAttribute('data-confirm');
      openDialog(confirmDialog);
    });
  });
  var confirmOk = byId('confirm-ok');
  if (confirmOk) {
    confirmOk.addEventListener('click', function () {
      var form = pendingForm;
      pendingForm = null;
      confirmDialog.close();
      // HTMLFormElement.submit() sends without firing 'submit' again.
      if (form) { form.submit(); }
    });
  }

  // Edit: the 12-alphanumeric rule as the user types. The server decides in the end and
  // its message replaces this one.
  var newKey = byId('new-api-key');
  var newKeyMsg = byId('new-api-key-msg');
  function checkNewKey() {
    var value = newKey.value;
    var message = '';
    if (value.length === 0) {
      message = 'Enter the new API key.';
    } else if (/[^A-Za-z0-9]/.test(value)) {
      message = 'The new key must be alphanumeric (A-Z, a-z, 0-9).';
    } else if (value.length !== 12) {
      message = 'The new key must be exactly 12 characters in length (' + value.length + ' now).';
    }
    newKey.setCustomValidity(message);
    newKey.setAttribute('aria-invalid', message ? 'true' : 'false');
    newKeyMsg.textContent = message;
    return message === '';
  }
  if (newKey && newKeyMsg) {
    newKey.addEventListener('input', checkNewKey);
    var editForm = byId('edit-form');
    editForm.addEventListener('submit', function (event) {
      if (!checkNewKey()) { event.preventDefault(); }
    });
    editForm.addEventListener('invalid', function () { checkNewKey(); }, true);
  }

  // Reveal: ask the admin console API (audited by the server) and show the value in place;
  // the value never goes into a URL. Without this script the form posts instead.
  var revealForm = byId('reveal-form');
  var keyValue = byId('key-value');
  var revealButton = byId('reveal');
  var revealError = byId('reveal-error');
  if (revealForm && keyValue && revealButton && window.fetch) {
    var shown = false;
    revealForm.addEventListener('submit', function (event) {
      event.preventDefault();
      revealError.textContent = '';
      if (shown) {
        keyValue.textContent = keyValue.getAttribute('data-masked');
        revealButton.textContent = 'Reveal';
        shown = false;
        return;
      }
      revealButton.disabled = true;
      fetch('/admin/v1/apiKey/reveal', {
        method: 'POST',
        credentials: 'same-origin',
        cache: 'no-store',
        headers: { 'X-CSRF-Token': csrfToken(), 'Accept': 'application/json' }
      }).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (result) {
        if (result.ok && typeof result.body.keyValue === 'string') {
          keyValue.textContent = result.body.keyValue;
          revealButton.textContent = 'Hide';
          shown = true;
        } else {
          revealError.textContent = (result.body && result.body.message) || 'The key could not be revealed.';
        }
      }).catch(function () {
        revealError.textContent = 'The key could not be revealed: the server did not answer.';
      }).then(function () {
        revealButton.disabled = false;
      });
    });
  }
})();
