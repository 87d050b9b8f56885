"""Measuring and showing: metrics, records, figures, the HTML report."""
