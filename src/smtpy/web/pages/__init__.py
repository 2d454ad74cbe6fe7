"""The dashboard's pages: one module per area, each with `router = page_router()`.

smtpy.web.app includes every module of this package (no list to edit): a new area is
a new file. Pages render templates that extend `base.html` (see templates/base.html for
its blocks) and take the signed-in user from `smtpy.web.session.PageUser`.
"""
