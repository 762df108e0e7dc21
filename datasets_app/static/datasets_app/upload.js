// Dataset upload: drop a file anywhere on the page (or choose one), check its
// size before sending, and show the upload's progress. htmx sends the form;
// without JavaScript the same form posts normally.
(function () {
  "use strict";

  function uploadForm() { return document.getElementById("upload-form"); }
  function part(form, name) { return form.querySelector("[data-" + name + "]"); }

  function showError(form, message) {
    var box = part(form, "client-error");
    box.textContent = message;
    box.hidden = !message;
  }

  function formatBytes(n) {
    var units = ["bytes", "KB", "MB", "GB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function checkSize(form) {
    var input = form.querySelector("input[type=file]");
    var file = input.files && input.files[0];
    var limit = parseInt(input.dataset.maxBytes || "0", 10);
    if (file && limit && file.size > limit) {
      showError(form, "The file is " + formatBytes(file.size) + "; the limit for one upload is " + formatBytes(limit) + ".");
      return false;
    }
    if (file && file.size === 0) {
      showError(form, "The file is empty.");
      return false;
    }
    showError(form, "");
    return true;
  }

  function hasFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return types && Array.prototype.indexOf.call(types, "Files") !== -1;
  }

  document.addEventListener("dragover", function (event) {
    var form = uploadForm();
    if (!form || !hasFiles(event)) return;
    event.preventDefault();
    part(form, "dropzone").classList.add("dragover");
  });

  document.addEventListener("dragleave", function (event) {
    var form = uploadForm();
    if (form && event.target === part(form, "dropzone")) part(form, "dropzone").classList.remove("dragover");
  });

  document.addEventListener("drop", function (event) {
    var form = uploadForm();
    if (!form || !hasFiles(event)) return;
    event.preventDefault();  // never let the browser open the dropped file instead
    part(form, "dropzone").classList.remove("dragover");
    var input = form.querySelector("input[type=file]");
    input.files = event.dataTransfer.files;
    if (checkSize(form)) form.requestSubmit();
  });

  document.addEventListener("change", function (event) {
    var form = uploadForm();
    if (form && event.target.matches && event.target.matches("#upload-form input[type=file]")) checkSize(form);
  });

  document.addEventListener("submit", function (event) {
    var form = uploadForm();
    if (form && event.target === form && !checkSize(form)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = uploadForm();
    if (!form || event.target !== form) return;
    var bar = part(form, "progress");
    bar.hidden = false;
    bar.firstElementChild.style.width = "0%";
    part(form, "progress-text").textContent = "Uploading…";
  });

  document.addEventListener("htmx:xhr:progress", function (event) {
    var form = uploadForm();
    if (!form || event.target !== form || !event.detail.lengthComputable) return;
    var percent = Math.round((100 * event.detail.loaded) / event.detail.total);
    part(form, "progress").firstElementChild.style.width = percent + "%";
    part(form, "progress-text").textContent = percent < 100
      ? "Uploading… " + percent + "% of " + formatBytes(event.detail.total)
      : "Uploaded; checking the file…";
  });
})();
