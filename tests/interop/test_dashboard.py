"""The web dashboard in a real browser: headless Chromium (Debian packages
`chromium` and `chromium-driver`) driven by selenium (PyPI), with paho-mqtt
clients doing what devices do. Signs in, sees a value paho published appear
in the topic tree within a second and its plot fill, disconnects a paho
client from the clients table (which paho sees as DISCONNECT 0x98), and
publishes from the form to a paho subscriber.

Screenshots of each page go to TERN_DASHBOARD_SCREENSHOTS (a directory) when
it is set: that is how docs/images/dashboard-*.png are made."""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

from interop_support import HTTP_TOKEN, VERSIONS, Client, need, unique

V5 = VERSIONS["v5"]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    need("chromium", "apt-get install chromium")
    need("chromedriver", "apt-get install chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,820"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, condition, timeout: float = 10.0):
    """Polls `condition` every 20 ms; returns its first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # an element not there yet
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("TERN_DASHBOARD_SCREENSHOTS")
    if folder:
        driver.save_screenshot(os.path.join(folder, f"dashboard-{name}.png"))


def test_the_stream_needs_credentials(tern_http):
    _, port = tern_http
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/dashboard/stream")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    # The page itself holds no state and is served to anyone, kept to this origin.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/", timeout=5) as page:
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert b"<script src=\"app.js\">" in page.read()


def test_sign_in_watch_a_value_arrive_disconnect_a_client_and_publish(tern_http, browser):
    from selenium.webdriver.common.by import By

    broker, port = tern_http
    find = browser.find_element
    css = By.CSS_SELECTOR

    browser.get(f"http://127.0.0.1:{port}/")
    wait_for("the sign-in form", lambda: find(By.ID, "login").is_displayed())
    screenshot(browser, "sign-in")
    find(By.ID, "token").send_keys("not the token")
    find(By.ID, "login-button").click()
    wait_for("a refusal", lambda: "Not signed in" in find(By.ID, "login-error").text)
    find(By.ID, "token").clear()
    find(By.ID, "token").send_keys(HTTP_TOKEN)
    find(By.ID, "login-button").click()
    wait_for("the dashboard", lambda: find(By.ID, "app").is_displayed())
    wait_for("the live stream", lambda: "on" in find(By.ID, "live").get_attribute("class"))

    # A device publishes; its value is in the tree within a second.
    sensor = Client(broker, V5, client_id=unique("sensor"))
    sensor.connect()
    topic = f"{unique('house')}/room1/temp"
    first, room = topic.split("/")[0], "/".join(topic.split("/")[:2])
    find(css, "nav button[data-tab=topics]").click()
    sensor.publish(topic, b"21.5", qos=1)
    published = time.monotonic()
    wait_for("the topic in the tree", lambda: find(css, f'li[data-topic="{first}"]'), timeout=1.0)
    seen_after = time.monotonic() - published
    assert seen_after < 1.0, f"the value took {seen_after:.2f} s to appear"
    find(css, f'li[data-topic="{first}"] > .row').click()
    find(css, f'li[data-topic="{room}"] > .row').click()
    leaf = wait_for("the leaf", lambda: find(css, f'li[data-topic="{topic}"] > .row'))
    assert "21.5" in leaf.text
    leaf.click()
    # More values: the plot of the topic fills, one point per value.
    for value in [b"22.0", b"22.5", b"21.8", b'{"temp": 23.1, "unit": "C"}']:
        time.sleep(0.6)  # the page samples twice a second: one point each
        sensor.publish(topic, value, qos=1)
    wait_for("five points in the plot", lambda: int(find(By.ID, "topic-plot").get_attribute("data-points")) >= 5)
    assert "5" == find(By.ID, "detail-count").text
    sensor.publish(f"{first}/config", b'{"name": "plant 4"}', qos=1, retain=True)
    wait_for("the retained badge", lambda: find(css, f'li[data-topic="{first}/config"] .badge'))
    screenshot(browser, "topics")

    # The overview plots what happened.
    find(css, "nav button[data-tab=overview]").click()
    wait_for("a message rate", lambda: int(find(By.ID, "plot-messages").get_attribute("data-points")) > 4)
    wait_for("connections counted", lambda: find(By.ID, "card-connections").text not in ("–", "0"))
    screenshot(browser, "overview")

    # A client is disconnected from its row: paho hears 0x98.
    device = Client(broker, V5, client_id=unique("device"))
    device.connect()
    find(css, "nav button[data-tab=clients]").click()
    find(By.ID, "client-search").send_keys(device.client_id)
    button = f'tr[data-client-id="{device.client_id}"] button.disconnect'
    wait_for("the device's row", lambda: find(css, button))
    screenshot(browser, "clients")
    # The table refreshes as the search is typed: click what is there now.
    wait_for("a click on Disconnect", lambda: find(css, button).click() or True)
    assert device.disconnected.wait(5), "paho was not disconnected"
    assert device.disconnect_reason.value == 0x98, device.disconnect_reason
    wait_for("the row gone", lambda: not browser.find_elements(css, f'tr[data-client-id="{device.client_id}"]'))

    # The publish form reaches a paho subscriber.
    listener = Client(broker, V5, client_id=unique("listener"))
    listener.connect()
    listener.subscribe(f"{first}/commands", qos=1)
    find(css, "nav button[data-tab=publish]").click()
    find(By.ID, "publish-topic").send_keys(f"{first}/commands")
    find(By.ID, "publish-payload").send_keys("reboot")
    find(By.ID, "publish-button").click()
    wait_for("the answer", lambda: "1 matching session" in find(By.ID, "publish-result").text)
    message = listener.get()
    assert (message.topic, message.payload) == (f"{first}/commands", b"reboot")
    screenshot(browser, "publish")
    for client in (sensor, listener):
        client.close()
