"""mitmproxy entry script: ``mitmdump -s addons/bundle.py --mode reverse:https://anthropic.mitmflare.invalid@8080``.

Options are listed by ``mitmdump -s addons/bundle.py --options | grep flare_``.
"""

from mitmflare.bundle import Bundle, make_addons

addons = [Bundle(make_addons())]
