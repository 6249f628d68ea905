// MathJax configuration for pymdownx.arithmatex (generic mode): it wraps inline maths as
// <span class="arithmatex">\(...\)</span> and display maths as <div class="arithmatex">\[...\]</div>.
// Only those elements are typeset, and the navigation labels (span.md-ellipsis): the table of
// contents repeats a heading's maths as plain text, which MathJax then typesets in place.
// MathJax itself is served from the site (javascripts/mathjax/tex-chtml-full.js, copied by
// docs/_hooks/offline_assets.py): no CDN. Material's navigation.instant is off, so each page
// load typesets its own page once.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|md-ellipsis",
  },
};

