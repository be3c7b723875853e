/* Journal-club slides: reveal.js setup and fitting every slide into a 16:9 projector frame.
   Included into each deck by cbnotes_slides.html.j2 (no template syntax in this file). */
(function () {
  "use strict";
  var WIDTH = 1280, HEIGHT = 720;   // 16:9; reveal.js scales this frame to the window
  var MIN_FONT = 0.62;              // shrink text down to 62% before letting a slide scroll
  var MIN_IMAGE = 0.45;             // and figures down to 45% of the slide height
  var MIN_PRE = 0.7;                // a text output too wide for the slide: its font to 70%

  function leafSlides() {
    return Array.prototype.filter.call(
      document.querySelectorAll(".reveal .slides section"),
      function (s) { return !s.querySelector("section"); });
  }

  function tooTall(section) {
    return section.scrollHeight > HEIGHT + 1;
  }

  // Text outputs (tables printed by pandas) keep their columns: shrink the font until the
  // widest line fits (down to MIN_PRE); past that an output scrolls sideways and a code block
  // of the markdown wraps its lines, rather than being cut.
  function fitPreWidths(section) {
    Array.prototype.forEach.call(section.querySelectorAll("pre"), function (pre) {
      pre.style.fontSize = "";
      pre.style.whiteSpace = "";
      if (pre.clientWidth === 0 || pre.scrollWidth <= pre.clientWidth + 1) { return; }
      var base = parseFloat(window.getComputedStyle(pre).fontSize);
      var scale = Math.max(MIN_PRE, pre.clientWidth / pre.scrollWidth * 0.98);
      pre.style.fontSize = (base * scale).toFixed(2) + "px";
      if (pre.scrollWidth > pre.clientWidth + 1 && pre.closest(".jp-RenderedMarkdown")) {
        pre.style.whiteSpace = "pre-wrap";
      }
    });
  }

  // Figures share what is left of the slide height after the text.
  function fitImages(section) {
    var images = Array.prototype.filter.call(section.querySelectorAll("img"), function (img) {
      return img.offsetHeight > 0;
    });
    for (var round = 0; round < 4 && images.length && tooTall(section); round++) {
      var excess = section.scrollHeight - HEIGHT;
      images.forEach(function (img) {
        var h = Math.max(HEIGHT * MIN_IMAGE, img.offsetHeight - excess / images.length - 4);
        img.style.maxHeight = Math.floor(h) + "px";
      });
    }
  }

  function setFont(section, scale) {
    section.style.fontSize = scale + "em";
    fitPreWidths(section);
  }

  function fitSlide(section) {
    if (!section || section.offsetHeight === 0) { return; }  // not displayed: fit it later
    section.classList.remove("cb-scroll");
    section.style.height = "";
    Array.prototype.forEach.call(section.querySelectorAll("img"), function (img) {
      img.style.maxHeight = "";
    });
    var scale = 1.0;
    setFont(section, scale);
    // First the text gets a little smaller, then the figures, then the text again.
    while (tooTall(section) && scale > 0.86) {
      scale = Math.round((scale - 0.04) * 100) / 100;
      setFont(section, scale);
    }
    fitImages(section);
    while (tooTall(section) && scale > MIN_FONT) {
      scale = Math.round((scale - 0.04) * 100) / 100;
      setFont(section, scale);
      fitImages(section);
    }
    if (tooTall(section)) {  // still too long: the slide scrolls instead of being cut
      section.classList.add("cb-scroll");
      section.style.height = HEIGHT + "px";
    }
    section.setAttribute("data-cb-fit", scale.toFixed(2));
  }

  function fitVisible() {
    if (!window.Reveal || !Reveal.isReady()) { return; }
    leafSlides().forEach(function (s) {
      if (s.offsetHeight > 0) { fitSlide(s); }
    });
  }
  window.cbnotesFitSlides = fitVisible;

  // Show a cell's code with the tag `slide-show-code`; every other code input is left out of
  // the deck by scripts/notebooks.py. The title slide is the first slide's first section.
  Reveal.initialize({
    width: WIDTH,
    height: HEIGHT,
    margin: 0.03,
    minScale: 0.2,
    maxScale: 2.0,
    center: false,
    controls: true,
    progress: true,
    history: true,
    hash: true,
    slideNumber: "c/t",
    transition: "slide",
    viewDistance: 2
  }).then(function () {
    var first = document.querySelector(".reveal .slides > section");
    if (first) {
      (first.querySelector("section") || first).classList.add("cb-title");
    }
    fitVisible();
  });
  Reveal.on("slidechanged", fitVisible);
  Reveal.on("resize", fitVisible);
  window.addEventListener("load", fitVisible);
  if (document.fonts && document.fonts.ready) { document.fonts.ready.then(fitVisible); }
})();
