"""clasp-analytics: metrics, reports, exports, feedback and the admin dashboard."""
