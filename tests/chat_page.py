"""The chat page as a person uses it, in a browser tab of its own: what the browser tests click and read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page, WebSocket, expect

# Generous: every wait ends as soon as the page shows what is awaited; this only bounds a failure.
WAIT_MS = 30_000


@dataclass(frozen=True)
class Shown:
    """One message row of the page."""

    channel: str
    offset: int | None
    sender: str
    text: str
    mine: bool


@dataclass
class ChatUser:
    context: BrowserContext
    page: Page
    # the URL of every WebSocket the page opened, in order
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, chat_url: str) -> ChatUser:
        context = browser.new_context()
        page = context.new_page()
        user = cls(context, page)
        page.on("websocket", user._opened)
        page.on("pageerror", lambda exc: user.errors.append(str(exc)))
        page.goto(chat_url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
        return user

    def _opened(self, ws: WebSocket) -> None:
        self.sockets.append(ws.url)

    def close(self) -> None:
        self.context.close()

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def connect(self, user: str) -> None:
        self.page.fill("#user", user)
        self.page.click("#connect")
        self.wait_open()

    def wait_open(self) -> None:
        expect(self.status).to_have_attribute("data-state", "open", timeout=WAIT_MS)

    def join(self, room: str) -> None:
        self.page.fill("#room", room)
        self.page.click("#join")

    def room(self, channel: str) -> Locator:
        return self.page.locator(f'#rooms li[data-channel="{channel}"]')

    def wait_joined(self, channel: str) -> None:
        expect(self.room(channel)).to_have_attribute("data-joined", "true", timeout=WAIT_MS)

    def say(self, channel: str, text: str) -> None:
        self.page.select_option("#target", channel)
        self.page.fill("#text", text)
        self.page.click("#send")

    def connections(self) -> int:
        return int(self.status.get_attribute("data-connection") or 0)

    def reconnect(self) -> None:
        """Drop the connection (or none) and wait until the next one is open."""
        after = self.connections() + 1
        self.page.click("#reconnect")
        expect(self.status).to_have_attribute("data-connection", str(after), timeout=WAIT_MS)
        self.wait_open()

    def disconnect(self) -> None:
        self.page.click("#disconnect")
        expect(self.status).to_have_attribute("data-state", "closed", timeout=WAIT_MS)

    def rows(self, channel: str | None = None) -> Locator:
        where = f'[data-channel="{channel}"]' if channel is not None else ""
        return self.page.locator(f"#messages li.message{where}")

    def wait_rows(self, count: int, channel: str | None = None, **attrs: str) -> None:
        extra = "".join(f'[data-{k}="{v}"]' for k, v in attrs.items())
        where = f'[data-channel="{channel}"]' if channel is not None else ""
        expect(self.page.locator(f"#messages li.message{where}{extra}")).to_have_count(count, timeout=WAIT_MS)

    def shown(self, channel: str | None = None) -> list[Shown]:
        rows: list[dict[str, Any]] = self.rows(channel).evaluate_all(
            """rows => rows.map(li => ({
                channel: li.dataset.channel, offset: li.dataset.offset, from: li.dataset.from,
                text: li.querySelector('.text').textContent, mine: li.dataset.mine === 'true'}))"""
        )
        return [
            Shown(
                channel=r["channel"],
                offset=int(r["offset"]) if r["offset"] else None,
                sender=r["from"],
                text=r["text"],
                mine=r["mine"],
            )
            for r in rows
        ]

    def notices(self, code: str) -> Locator:
        return self.page.locator(f'#notices li[data-code="{code}"]')
