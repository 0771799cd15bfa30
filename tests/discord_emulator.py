"""A loopback Discord emulator: REST API + gateway websocket on 127.0.0.1, for wire-level bot tests.

Why: no machine here reaches Discord, and in-process fakes cannot prove that the real entrypoint, discord.py's
real HTTP client and gateway code, and our process lifecycle work together. This server speaks enough of
Discord's API v10 for a bot to log in, connect, register slash commands, receive interactions and answer them;
tests drive it (dispatch events) and inspect everything the bot sent (recorded requests, stored messages).

Point a bot at it with the test-only settings ``discord.api_base = emulator.api_base`` and
``discord.gateway_url = emulator.gateway_url`` (``bot.app.apply_endpoint_overrides`` patches discord.py's
``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``) and the token ``emulator.token``.

Typical use::

    async with DiscordEmulator() as emu:
        ... start the bot with emu.api_base / emu.gateway_url / emu.token ...
        await emu.wait_until_ready(timeout=120)
        sent = await emu.slash_command("status")
        reply = await emu.wait_for_response(sent)
        assert reply.json["type"] == 4

What it implements (extend it here rather than in tests):

* REST: ``GET /users/@me``, ``GET /oauth2/applications/@me``, ``GET /gateway[/bot]``; global and guild
  application commands (``GET``/``PUT`` bulk overwrite/``POST``); ``POST /interactions/{id}/{token}/callback``
  (answers 200 JSON ``{"interaction", "resource"}``; unknown interaction 10062, second acknowledgement 40060);
  webhooks ``GET``/``PATCH``/``DELETE .../messages/{@original|id}`` and ``POST /webhooks/{app}/{token}``
  (followups, ``?wait``); channel messages ``POST``/``GET``/``PATCH``/``DELETE``; own reactions ``PUT``/``DELETE``;
  JSON and multipart bodies (``payload_json`` + ``files[n]``); uploaded files are served back at their
  attachment URLs. Anything else answers 404 and lands in :attr:`DiscordEmulator.unhandled`.
* Gateway: HELLO, heartbeat ACK, IDENTIFY (wrong token: close 4004) → READY → one GUILD_CREATE per guild;
  RESUME is refused with INVALID_SESSION (the bot re-identifies). Frames are always plain JSON text: the
  ``compress`` query parameter is ignored, which discord.py accepts (it only decompresses binary frames).

Pitfalls it respects (see docs in shared/reference/discord.md): ``Content-Type`` is exactly
``application/json`` (a charset suffix makes discord.py treat the body as text); interactions carry
``attachment_size_limit``; member ``roles`` are id lists; the application id in ``/oauth2/applications/@me``
matches interactions and webhook paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

API_PREFIX = r"/api/v{version:\d+}"
DEFAULT_TOKEN = "emulator-bot-token"
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit since 2025
EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Interaction and callback types (Discord API).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 4, 5, 6, 7

# Permission bits granted to @everyone in emulated guilds: what an image bot needs.
DEFAULT_PERMISSIONS = (
    (1 << 6)  # ADD_REACTIONS
    | (1 << 10)  # VIEW_CHANNEL
    | (1 << 11)  # SEND_MESSAGES
    | (1 << 14)  # EMBED_LINKS
    | (1 << 15)  # ATTACH_FILES
    | (1 << 16)  # READ_MESSAGE_HISTORY
    | (1 << 18)  # USE_EXTERNAL_EMOJIS
    | (1 << 31)  # USE_APPLICATION_COMMANDS
    | (1 << 38)  # SEND_MESSAGES_IN_THREADS
)

T = TypeVar("T")
# Where the middleware leaves the parsed request for the handlers (aiohttp ≥ 3.12 wants typed keys).
_RECORD: Any = web.RequestKey("record", object) if hasattr(web, "RequestKey") else "record"
_snowflakes = itertools.count(1_300_000_000_000_000_000)


def snowflake() -> int:
    """A fresh, increasing Discord-style id."""
    return next(_snowflakes)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON with exactly ``Content-Type: application/json`` (aiohttp's json_response adds a charset)."""
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def error_response(status: int, code: int, message: str) -> web.Response:
    return json_response({"message": message, "code": code}, status)


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """A REST request the bot made, with the parsed body and the status the emulator answered."""

    method: str
    path: str  # without the /api/vN prefix, e.g. "/interactions/1/tok/callback"
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    files: list[UploadedFile] = field(default_factory=list)
    status: int = 0
    match: dict[str, str] = field(default_factory=dict)  # route parameters
    unhandled: bool = False  # no emulator route: answered 404


@dataclass
class EmulatedUser:
    id: int
    username: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.username, "discriminator": "0", "global_name": self.username,
                "avatar": None, "bot": self.bot, "system": False, "public_flags": 0, "flags": 0}


@dataclass
class EmulatedGuild:
    """A guild the bot is in, with text channels (``channel_ids``) and an owner."""

    id: int
    name: str = "Emulated Guild"
    channel_ids: tuple[int, ...] = ()
    owner_id: int = 1

    def __post_init__(self) -> None:
        if not self.channel_ids:
            self.channel_ids = (snowflake(),)


@dataclass
class SentInteraction:
    """An interaction dispatched to the bot; ``acknowledged`` flips when the bot calls back."""

    id: int
    token: str
    payload: dict[str, Any]
    acknowledged: bool = False
    original_message_id: int | None = None


@dataclass
class GatewaySession:
    """One websocket connection from the bot."""

    ws: web.WebSocketResponse
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    sequence: int = 0
    identify: dict[str, Any] | None = None
    ready: bool = False
    closed: bool = False
    close_code: int | None = None
    received: list[dict[str, Any]] = field(default_factory=list)  # every payload the bot sent

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.sequence += 1
        await self.send({"op": 0, "t": event, "s": self.sequence, "d": data})


class DiscordEmulator:
    """The emulator. Create it inside a running loop; ``await start()`` (or ``async with``) binds a free port."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, guilds: Iterable[EmulatedGuild] | None = None,
                 application_id: int | None = None, bot_name: str = "Atelier Test",
                 heartbeat_interval_ms: int = 41_250) -> None:
        self.token = token
        self.application_id = application_id or snowflake()
        self.bot_user = EmulatedUser(self.application_id, bot_name, bot=True)
        self.owner = EmulatedUser(snowflake(), "owner")
        self.user = EmulatedUser(snowflake(), "tester")  # default author of dispatched interactions
        self.guilds: dict[int, EmulatedGuild] = {
            g.id: g for g in (guilds if guilds is not None else [EmulatedGuild(snowflake(), owner_id=self.owner.id)])
        }
        self.heartbeat_interval_ms = heartbeat_interval_ms

        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []
        self.commands: dict[int | None, list[dict[str, Any]]] = {}  # guild id (None = global) → commands
        self.messages: dict[int, dict[str, Any]] = {}
        self.reactions: dict[int, list[str]] = {}  # message id → emoji the bot added
        self.attachments: dict[int, UploadedFile] = {}
        self.interactions: dict[int, SentInteraction] = {}
        self.sessions: list[GatewaySession] = []

        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> DiscordEmulator:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        for session in self.sessions:
            if not session.closed:
                await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.api_base`` should be set to."""
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``discord.gateway_url`` should be set to."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def guild(self) -> EmulatedGuild:
        """The first guild (most tests need only one)."""
        return next(iter(self.guilds.values()))

    # -- waiting ---------------------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, check: Callable[[], T | None], *, timeout: float = 30.0, what: str = "a condition") -> T:
        """Wait until ``check()`` returns something other than None (re-checked on every emulator event)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while (result := check()) is None:
                    await self._changed.wait()
                return result
        except TimeoutError:
            seen = ", ".join(f"{r.method} {r.path} → {r.status}" for r in self.requests[-10:]) or "none"
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last requests: {seen}") from None

    async def wait_for_request(self, predicate: Callable[[RecordedRequest], bool], *, timeout: float = 30.0,
                               what: str = "a request") -> RecordedRequest:
        """The first recorded request (past or future) matching ``predicate``."""
        return await self.wait_for(lambda: next((r for r in self.requests if predicate(r)), None),
                                   timeout=timeout, what=what)

    async def wait_until_ready(self, *, timeout: float = 60.0) -> GatewaySession:
        """Wait until a bot has identified and been sent READY and its GUILD_CREATEs."""
        return await self.wait_for(lambda: next((s for s in self.sessions if s.ready and not s.closed), None),
                                   timeout=timeout, what="the bot to connect to the gateway (READY)")

    async def wait_for_commands(self, guild_id: int | None = None, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until commands are registered for ``guild_id`` (None = global) and return them."""
        where = "globally" if guild_id is None else f"in guild {guild_id}"
        return await self.wait_for(lambda: self.commands.get(guild_id), timeout=timeout,
                                   what=f"slash commands registered {where}")

    async def wait_for_response(self, interaction: SentInteraction, *, timeout: float = 30.0) -> RecordedRequest:
        """The bot's callback request for ``interaction`` (its ``json`` holds type and data)."""
        prefix = f"/interactions/{interaction.id}/{interaction.token}/callback"
        return await self.wait_for_request(lambda r: r.path == prefix, timeout=timeout,
                                           what=f"the response to interaction {interaction.id}")

    # -- driving the bot -------------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send a gateway DISPATCH to every ready session; returns how many received it."""
        sent = 0
        for session in self.sessions:
            if session.ready and not session.closed:
                await session.dispatch(event, data)
                sent += 1
        if not sent:
            raise AssertionError(f"no bot is connected to receive {event}")
        return sent

    def registered_command(self, name: str, guild_id: int | None = None) -> dict[str, Any]:
        """A command as registered (guild first, then global), like Discord's lookup for an invocation."""
        for scope in (guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise AssertionError(f"/{name} is not registered (guild {guild_id}); the bot must sync it first")

    def interaction_payload(self, kind: int, data: dict[str, Any] | None, *, guild_id: int | None = None,
                            channel_id: int | None = None, user: EmulatedUser | None = None,
                            message: dict[str, Any] | None = None) -> dict[str, Any]:
        """A complete INTERACTION_CREATE payload (in a guild channel unless ``guild_id`` is 0)."""
        guild = self.guilds[guild_id] if guild_id else self.guild
        channel = channel_id or guild.channel_ids[0]
        author = user or self.user
        payload: dict[str, Any] = {
            "id": str(snowflake()),
            "application_id": str(self.application_id),
            "type": kind,
            "token": "itok-" + secrets.token_urlsafe(24),
            "version": 1,
            "guild_id": str(guild.id),
            "channel_id": str(channel),
            "channel": self._channel_payload(guild, channel),
            "member": self._member_payload(author, permissions=DEFAULT_PERMISSIONS),
            "app_permissions": str(DEFAULT_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if data is not None:
            payload["data"] = data
        if message is not None:
            payload["message"] = message
        return payload

    async def interact(self, payload: dict[str, Any]) -> SentInteraction:
        """Dispatch a prepared INTERACTION_CREATE payload and remember it for the callback."""
        sent = SentInteraction(int(payload["id"]), payload["token"], payload)
        self.interactions[sent.id] = sent
        await self.dispatch("INTERACTION_CREATE", payload)
        return sent

    async def slash_command(self, name: str, options: list[dict[str, Any]] | None = None, *,
                            guild_id: int | None = None, channel_id: int | None = None,
                            user: EmulatedUser | None = None) -> SentInteraction:
        """Invoke a registered slash command as a user would. ``options`` use Discord's wire format
        (``[{"name": "prompt", "type": 3, "value": "a cat"}]``)."""
        gid = guild_id or self.guild.id
        command = self.registered_command(name, gid)
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": command.get("type", 1),
                                "options": options or []}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self.interact(self.interaction_payload(APPLICATION_COMMAND, data, guild_id=gid,
                                                            channel_id=channel_id, user=user))

    async def click(self, message_id: int, custom_id: str, *, user: EmulatedUser | None = None,
                    component_type: int = 2, values: list[str] | None = None) -> SentInteraction:
        """Press a button (or choose ``values`` in a select) on a message the bot sent."""
        message = self.messages[message_id]
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        gid = int(message["guild_id"]) if message.get("guild_id") else None
        return await self.interact(self.interaction_payload(
            MESSAGE_COMPONENT, data, guild_id=gid, channel_id=int(message["channel_id"]), user=user,
            message=message))

    def original_message(self, interaction: SentInteraction) -> dict[str, Any] | None:
        """The interaction's original response message as it is now (after edits)."""
        mid = interaction.original_message_id
        return None if mid is None else self.messages.get(mid)

    # -- payload builders ------------------------------------------------------------------------------------

    def _member_payload(self, user: EmulatedUser, *, permissions: int | None = None) -> dict[str, Any]:
        member: dict[str, Any] = {
            "user": user.payload(), "nick": None, "avatar": None, "roles": [], "joined_at": now_iso(),
            "premium_since": None, "deaf": False, "mute": False, "flags": 0, "pending": False,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            member["permissions"] = str(permissions)
        return member

    def _channel_payload(self, guild: EmulatedGuild, channel_id: int) -> dict[str, Any]:
        return {"id": str(channel_id), "type": 0, "guild_id": str(guild.id), "name": f"channel-{channel_id % 1000}",
                "position": guild.channel_ids.index(channel_id) if channel_id in guild.channel_ids else 0,
                "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}

    def _guild_payload(self, guild: EmulatedGuild) -> dict[str, Any]:
        everyone = {"id": str(guild.id), "name": "@everyone", "color": 0, "hoist": False, "position": 0,
                    "permissions": str(DEFAULT_PERMISSIONS), "managed": False, "mentionable": False, "flags": 0}
        return {
            "id": str(guild.id), "name": guild.name, "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": str(guild.owner_id), "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "roles": [everyone], "emojis": [],
            "features": [], "mfa_level": 0, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "max_members": 500_000, "vanity_url_code": None, "description": None,
            "banner": None, "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "stickers": [], "premium_progress_bar_enabled": False,
            "joined_at": now_iso(), "large": False, "unavailable": False, "member_count": 2, "voice_states": [],
            "members": [self._member_payload(self.bot_user)], "presences": [], "threads": [],
            "channels": [self._channel_payload(guild, c) for c in guild.channel_ids],
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        }

    def _application_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id), "name": self.bot_user.username, "icon": None, "description": "",
            "rpc_origins": [], "bot_public": True, "bot_require_code_grant": False, "owner": self.owner.payload(),
            "summary": "", "verify_key": "0" * 64, "team": None, "flags": 0, "interactions_endpoint_url": None,
            "redirect_uris": [], "tags": [], "approximate_guild_count": len(self.guilds),
            "bot": self.bot_user.payload(),
        }

    def _channel_guild(self, channel_id: int) -> EmulatedGuild | None:
        return next((g for g in self.guilds.values() if channel_id in g.channel_ids), None)

    def _attachments(self, body: Mapping[str, Any], files: list[UploadedFile]) -> list[dict[str, Any]]:
        """Attachment objects for uploaded ``files[n]`` (matched by index to ``body["attachments"]``)."""
        described = {str(a.get("id")): a for a in body.get("attachments", []) or [] if isinstance(a, dict)}
        result = []
        for upload in files:
            index = upload.field.removeprefix("files[").removesuffix("]")
            meta = described.get(index, {})
            aid = snowflake()
            self.attachments[aid] = upload
            url = f"{self.url}/attachments/{aid}/{upload.filename}"
            attachment = {"id": str(aid), "filename": meta.get("filename", upload.filename), "size": len(upload.data),
                          "url": url, "proxy_url": url, "content_type": upload.content_type}
            if meta.get("description"):
                attachment["description"] = meta["description"]
            result.append(attachment)
        return result

    def _new_message(self, channel_id: int, body: Mapping[str, Any], files: list[UploadedFile], *,
                     interaction: SentInteraction | None = None, flags: int = 0) -> dict[str, Any]:
        guild = self._channel_guild(channel_id)
        message: dict[str, Any] = {
            "id": str(snowflake()), "channel_id": str(channel_id), "author": self.bot_user.payload(),
            "content": body.get("content") or "", "timestamp": now_iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": self._attachments(body, files), "embeds": body.get("embeds") or [], "pinned": False,
            "type": 0, "flags": flags | int(body.get("flags") or 0), "components": body.get("components") or [],
            "reactions": [],
        }
        if guild is not None:
            message["guild_id"] = str(guild.id)
        if interaction is not None:
            message["type"] = 20 if interaction.payload["type"] == APPLICATION_COMMAND else 19
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            user = interaction.payload.get("member", {}).get("user") or interaction.payload.get("user")
            message["interaction_metadata"] = {
                "id": str(interaction.id), "type": interaction.payload["type"], "user": user,
                "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
                "name": (interaction.payload.get("data") or {}).get("name", ""),
            }
        self.messages[int(message["id"])] = message
        return message

    def _edit_message(self, message: dict[str, Any], body: Mapping[str, Any], files: list[UploadedFile]) -> None:
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ([] if key != "content" else "")
        if "attachments" in body or files:
            keep = {str(a.get("id")) for a in body.get("attachments", []) or [] if isinstance(a, dict)}
            kept = [a for a in message["attachments"] if a["id"] in keep]
            message["attachments"] = kept + self._attachments(body, files)
        if "flags" in body and body["flags"] is not None:
            message["flags"] = (message["flags"] & EPHEMERAL) | int(body["flags"])
        message["flags"] &= ~LOADING  # an edit of a deferred ("thinking") response completes it
        message["edited_timestamp"] = now_iso()

    # -- HTTP plumbing ---------------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if request.path == "/gateway" or request.path.startswith("/attachments/"):
            return await handler(request)
        path = request.path
        version = path.split("/")[2] if path.startswith("/api/v") else ""
        record = RecordedRequest(method=request.method, path=path.removeprefix(f"/api/{version}"),
                                 query=dict(request.query), headers=dict(request.headers),
                                 match=dict(request.match_info))
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    record.json = json.loads(await part.text())
                elif part.name:
                    data = await part.read(decode=False)
                    record.files.append(UploadedFile(part.name, part.filename or part.name,
                                                     part.headers.get("Content-Type", "application/octet-stream"),
                                                     bytes(data)))
        elif request.can_read_body:
            text = await request.text()
            record.json = json.loads(text) if text else None
        request[_RECORD] = record
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except Exception as exc:  # an emulator bug: answer 500 and keep it visible in the record
            response = error_response(500, 0, f"emulator error: {type(exc).__name__}: {exc}")
        record.status = response.status
        self.requests.append(record)
        if record.unhandled:
            self.unhandled.append(record)
        await self._notify()
        return response

    def _routes(self, app: web.Application) -> None:
        p = API_PREFIX
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{aid}/{filename}", self._serve_attachment)
        add = app.router.add_route
        add("GET", p + "/users/@me", self._me)
        add("GET", p + "/oauth2/applications/@me", self._application)
        add("GET", p + "/applications/@me", self._application)
        add("GET", p + "/gateway", self._gateway_info)
        add("GET", p + "/gateway/bot", self._gateway_info)
        for prefix in (p + "/applications/{app}/commands", p + "/applications/{app}/guilds/{guild}/commands"):
            add("GET", prefix, self._get_commands)
            add("PUT", prefix, self._put_commands)
            add("POST", prefix, self._post_command)
        add("POST", p + "/interactions/{iid}/{itoken}/callback", self._callback)
        add("POST", p + "/webhooks/{app}/{wtoken}", self._followup)
        for method in ("GET", "PATCH", "DELETE"):
            add(method, p + "/webhooks/{app}/{wtoken}/messages/{mid}", self._webhook_message)
            add(method, p + "/channels/{cid}/messages/{mid}", self._channel_message)
        add("POST", p + "/channels/{cid}/messages", self._create_message)
        add("GET", p + "/channels/{cid}", self._get_channel)
        add("PUT", p + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        add("DELETE", p + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        add("*", "/{tail:.*}", self._unhandled)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    @staticmethod
    def _body(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
        record: RecordedRequest = request[_RECORD]
        body = record.json if isinstance(record.json, dict) else {}
        return body, record.files

    # -- REST handlers ---------------------------------------------------------------------------------------

    async def _unhandled(self, request: web.Request) -> web.Response:
        if _RECORD in request:
            request[_RECORD].unhandled = True
        return error_response(404, 0, f"404: Not Found (emulator has no route {request.method} {request.path})")

    async def _me(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        return json_response({**self.bot_user.payload(), "mfa_enabled": False, "verified": True, "locale": "en-US"})

    async def _application(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        return json_response(self._application_payload())

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return json_response({"url": f"ws://127.0.0.1:{self.port}", "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    def _command_scope(self, request: web.Request) -> tuple[int | None, web.Response | None]:
        if not self._authorized(request):
            return None, error_response(401, 0, "401: Unauthorized")
        if int(request.match_info["app"]) != self.application_id:
            return None, error_response(403, 50001, "Missing Access")
        guild = request.match_info.get("guild")
        if guild is not None and int(guild) not in self.guilds:
            return None, error_response(403, 50001, "Missing Access")
        return (int(guild) if guild is not None else None), None

    def _stored_command(self, data: dict[str, Any], guild_id: int | None, existing: dict[str, Any] | None) -> dict:
        # Discord answers every command with a description: "" for context-menu commands, which send none.
        command = {"type": 1, "options": [], "default_member_permissions": None, "nsfw": False, "description": "",
                   **data}
        command.update({"id": existing["id"] if existing else str(snowflake()),
                        "application_id": str(self.application_id), "version": str(snowflake())})
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        return command

    async def _get_commands(self, request: web.Request) -> web.Response:
        scope, error = self._command_scope(request)
        return error or json_response(self.commands.get(scope, []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope, error = self._command_scope(request)
        if error:
            return error
        record: RecordedRequest = request[_RECORD]
        if not isinstance(record.json, list):
            return error_response(400, 50035, "Invalid Form Body (expected a list of commands)")
        old = {(c["name"], c.get("type", 1)): c for c in self.commands.get(scope, [])}
        self.commands[scope] = [self._stored_command(c, scope, old.get((c["name"], c.get("type", 1))))
                                for c in record.json]
        return json_response(self.commands[scope])

    async def _post_command(self, request: web.Request) -> web.Response:
        scope, error = self._command_scope(request)
        if error:
            return error
        body, _ = self._body(request)
        current = [c for c in self.commands.get(scope, []) if c["name"] != body.get("name")]
        command = self._stored_command(body, scope, None)
        self.commands[scope] = [*current, command]
        return json_response(command, 201)

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(int(request.match_info["iid"]))
        if interaction is None or interaction.token != request.match_info["itoken"]:
            return error_response(404, 10062, "Unknown interaction")
        if interaction.acknowledged:
            return error_response(400, 40060, "Interaction has already been acknowledged.")
        body, files = self._body(request)
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        interaction.acknowledged = True
        channel_id = int(interaction.payload["channel_id"])
        message: dict[str, Any] | None = None
        if kind == CHANNEL_MESSAGE:
            message = self._new_message(channel_id, data, files, interaction=interaction)
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            message = self._new_message(channel_id, {"flags": data.get("flags", 0)}, [], interaction=interaction,
                                        flags=LOADING)
        elif kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and "message" in interaction.payload:
            message = self.messages.get(int(interaction.payload["message"]["id"]), interaction.payload["message"])
            if kind == UPDATE_MESSAGE:
                self._edit_message(message, data, files)
        if message is not None and kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            interaction.original_message_id = int(message["id"])
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id), "type": interaction.payload["type"],
                "response_message_id": message["id"] if message else None,
                "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(int((message or {}).get("flags", 0)) & EPHEMERAL),
            },
            "resource": {"type": kind, **({"message": message} if message else {})},
        }
        return json_response(answer)

    def _interaction_by_token(self, request: web.Request) -> SentInteraction | None:
        if int(request.match_info["app"]) != self.application_id:
            return None
        token = request.match_info["wtoken"]
        return next((i for i in self.interactions.values() if i.token == token), None)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_by_token(request)
        if interaction is None:
            return error_response(404, 10015, "Unknown Webhook")
        body, files = self._body(request)
        message = self._new_message(int(interaction.payload["channel_id"]), body, files, interaction=interaction)
        if request.query.get("wait", "").lower() in ("true", "1"):
            return json_response(message)
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_by_token(request)
        if interaction is None:
            return error_response(404, 10015, "Unknown Webhook")
        mid_text = request.match_info["mid"]
        mid = interaction.original_message_id if mid_text == "@original" else int(mid_text)
        message = self.messages.get(mid) if mid is not None else None
        if message is None:
            return error_response(404, 10008, "Unknown Message")
        return self._message_verb(request, message)

    def _message_verb(self, request: web.Request, message: dict[str, Any]) -> web.Response:
        if request.method == "DELETE":
            self.messages.pop(int(message["id"]), None)
            return web.Response(status=204)
        if request.method == "PATCH":
            body, files = self._body(request)
            self._edit_message(message, body, files)
        return json_response(message)

    async def _create_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        channel_id = int(request.match_info["cid"])
        if self._channel_guild(channel_id) is None:
            return error_response(404, 10003, "Unknown Channel")
        body, files = self._body(request)
        return json_response(self._new_message(channel_id, body, files))

    async def _channel_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        message = self.messages.get(int(request.match_info["mid"]))
        if message is None or message["channel_id"] != request.match_info["cid"]:
            return error_response(404, 10008, "Unknown Message")
        return self._message_verb(request, message)

    async def _get_channel(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        channel_id = int(request.match_info["cid"])
        guild = self._channel_guild(channel_id)
        if guild is None:
            return error_response(404, 10003, "Unknown Channel")
        return json_response(self._channel_payload(guild, channel_id))

    async def _reaction(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")
        mid = int(request.match_info["mid"])
        if mid not in self.messages:
            return error_response(404, 10008, "Unknown Message")
        emoji = request.match_info["emoji"]  # aiohttp has already percent-decoded it
        mine = self.reactions.setdefault(mid, [])
        if request.method == "PUT" and emoji not in mine:
            mine.append(emoji)
        elif request.method == "DELETE" and emoji in mine:
            mine.remove(emoji)
        return web.Response(status=204)

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        upload = self.attachments.get(int(request.match_info["aid"]))
        if upload is None:
            return web.Response(status=404)
        return web.Response(body=upload.data, headers={"Content-Type": upload.content_type})

    # -- gateway ---------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws)
        self.sessions.append(session)
        try:
            await session.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                session.received.append(payload)
                await self._gateway_op(session, payload)
                await self._notify()
        finally:
            session.closed = True
            session.close_code = ws.close_code
            await self._notify()
        return ws

    async def _gateway_op(self, session: GatewaySession, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        if op == 1:  # HEARTBEAT
            await session.send({"op": 11})
        elif op == 2:  # IDENTIFY
            data = payload.get("d") or {}
            if data.get("token") != self.token:
                await session.ws.close(code=4004, message=b"Authentication failed.")
                return
            session.identify = data
            ready: dict[str, Any] = {
                "v": 10, "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False},
                "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
                "session_id": session.session_id, "resume_gateway_url": self.gateway_url,
                "application": {"id": str(self.application_id), "flags": 0},
                "private_channels": [], "relationships": [], "presences": [], "geo_ordered_rtc_regions": [],
            }
            if "shard" in data:
                ready["shard"] = data["shard"]
            await session.dispatch("READY", ready)
            for guild in self.guilds.values():
                await session.dispatch("GUILD_CREATE", self._guild_payload(guild))
            session.ready = True
        elif op == 6:  # RESUME: not supported; the bot must identify again
            await session.send({"op": 9, "d": False})
