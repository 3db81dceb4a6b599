"""⑧ Reports: console tables, markdown, html and plots. They read result files only."""
