"use strict";
// A player whose media the browser cannot decode says so next to itself. The server already marks
// the codecs it knows browsers lack (HEVC, Theora, AMR…); this catches the ones it could not foresee.
// A <video> that loads but has no picture (videoWidth 0) is one of those too: its audio may play.
(function () {
  function watch(player) {
    var note = document.getElementById(player.getAttribute("data-note"));
    if (!note) return;
    function show() { note.hidden = false; }
    function checkPicture() {
      if (player.tagName === "VIDEO" && player.videoWidth === 0) show();
    }
    player.addEventListener("error", show);
    player.addEventListener("loadedmetadata", checkPicture);
    if (player.error) show();
    else if (player.readyState >= 1) checkPicture();
  }
  document.querySelectorAll("video[data-note], audio[data-note]").forEach(watch);
})();
