"""Pure publishing logic: releases, retention, release naming. No network or file I/O here."""
