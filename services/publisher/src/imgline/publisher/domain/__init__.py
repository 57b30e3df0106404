"""Pure publishing logic: releases, retention, HTTP decisions. No network or file I/O here."""
