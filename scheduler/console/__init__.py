"""The web console: everything a practitioner does with notebooks, in the browser, served by
the scheduler itself (``/console/``; no other service to run, and behind the same load
balancer as the API).

Server-rendered pages (Jinja2, autoescaped: names and labels are user input) over the same
services as the JSON API, with the same checks and messages (``access``, ``notebooks``,
``run_form``, ``project``, ``operators``; ``web`` wraps every page, ``routes`` lists them);
a session cookie and CSRF tokens (:mod:`scheduler.console.session`); a little JavaScript
(``static/console.js``: the notebook list refreshes itself, the run form shows its CLI
command as it changes) that the pages do without. Nothing is fetched from anywhere else: the
Content-Security-Policy allows this origin's scripts, styles and forms only.
"""
