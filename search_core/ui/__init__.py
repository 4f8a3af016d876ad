"""The Gradio page of ``app.py``, one module per tab.

    errors.py       an error as one sentence on the page (public_message, explained)
    admin.py        who may change the library (Access, the login box)
    page.py         the page's look and what every tab shares (CSS, model menus, worker groups)
    hits.py         a search result as players, pictures and HTML
    search_tab.py, library_tab.py, speakers_tab.py, duplicates_tab.py: one tab each

Each event handler calls one ``LibraryService`` method. Data flows one way: this package imports
the rest of ``search_core``; nothing in ``search_core`` imports it.
"""
