// Sortable tables: click a header with data-col to sort by that column (numbers by value, else text); again to reverse.
document.querySelectorAll('table.sortable th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var asc = th.dataset.dir !== 'asc';
    table.querySelectorAll('th[data-col]').forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? 'asc' : 'desc';
    var rows = Array.from(body.rows).filter(function (r) { return r.cells.length > i; });
    function key(r) { var c = r.cells[i]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim(); }
    rows.sort(function (x, y) {
      var a = key(x), b = key(y);
      if (a === '' && b === '') return 0;
      if (a === '') return 1;
      if (b === '') return -1;
      var p = parseFloat(a), q = parseFloat(b);
      if (!isNaN(p) && !isNaN(q) && String(p) !== 'NaN' && /^[-+0-9.eE]+$/.test(a) && /^[-+0-9.eE]+$/.test(b)) {
        return asc ? p - q : q - p;
      }
      return asc ? a.localeCompare(b) : b.localeCompare(a);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
