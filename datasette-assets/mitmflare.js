// mitmflare dashboard: the column descriptions of a table page go into a collapsed block and
// become each column header's tooltip; a truncated cell shows its full text on hover.
document.addEventListener("DOMContentLoaded", () => {
  const list = document.querySelector("dl.column-descriptions");
  if (list) {
    const descriptions = {};
    list.querySelectorAll("dt").forEach((dt) => {
      descriptions[dt.textContent.trim()] = dt.nextElementSibling ? dt.nextElementSibling.textContent : "";
    });
    document.querySelectorAll("th[data-column]").forEach((th) => {
      const text = descriptions[th.dataset.column];
      if (text) th.title = text;
    });
    const details = document.createElement("details");
    details.className = "column-descriptions";
    const summary = document.createElement("summary");
    summary.textContent = `What the ${Object.keys(descriptions).length} columns mean (or hover a column header)`;
    list.replaceWith(details);
    details.append(summary, list);
  }
  document.querySelectorAll("table.rows-and-columns td").forEach((td) => {
    if (!td.title && td.textContent.length > 30) td.title = td.textContent.trim();
  });
});
