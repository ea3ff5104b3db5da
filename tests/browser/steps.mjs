// The steps run.mjs drives Cinny through. Each does what a user would do in
// Cinny's UI and checks what a user would see; a few then ask the server
// directly what Cinny cannot show (a thread's relations).

// register signs up a new user in Cinny's registration form and waits for
// the client to load.
async function register(t, page, user) {
  const { cinny, myelin, password, visible } = t;
  await page.goto(`${cinny.url}/register/${encodeURIComponent(myelin.url)}/`);
  await visible(page.locator('input[name="usernameInput"]'), 'registration form');
  await page.fill('input[name="usernameInput"]', user);
  await page.fill('input[name="passwordInput"]', password);
  await page.fill('input[name="confirmPasswordInput"]', password);
  await page.locator('form button[type="submit"]').click();
  await t.poll('leaving the registration page after submitting it', t.UI_TIMEOUT, async () => !page.url().includes('/register/'));
  await visible(page.getByText('Welcome to Cinny'), 'the client after registration');
  const s = await t.session(page);
  if (!s.accessToken) throw new Error('no session stored after registration');
  return s;
}

// sendMessage types text into the room's composer and sends it with Enter.
async function sendMessage(t, page, body) {
  const composer = page.locator('[data-slate-editor="true"]').last();
  await t.visible(composer, 'the message composer');
  await composer.click();
  await page.keyboard.type(body);
  await page.keyboard.press('Enter');
}

// messageBar hovers a message and returns its options bar: react, reply,
// edit (own messages) and menu buttons, in that order, the reply button
// carrying the event's ID. Only the hovered message shows one.
async function messageBar(t, page, body) {
  // The first match: replies quote the message after it.
  const m = page.getByText(body, { exact: true }).first();
  await t.visible(m, `message "${body}"`);
  await m.scrollIntoViewIfNeeded();
  // Leave the timeline first: when new messages have moved another one
  // under a resting pointer, Cinny has seen no pointer enter it.
  await page.mouse.move(5, 5);
  await m.hover();
  const bar = page.locator('xpath=//div[button[@aria-pressed] and button[@data-event-id]]');
  await t.visible(bar, `the options bar of message "${body}"`);
  const buttons = bar.first().locator(':scope > button');
  const reply = buttons.nth(1);
  const eventId = await reply.getAttribute('data-event-id');
  return { reply, eventId, buttons };
}

// openMessageMenu opens the "..." menu of a message.
async function openMessageMenu(t, page, body) {
  const bar = await messageBar(t, page, body);
  await bar.buttons.last().click();
  return bar;
}

// sidebarButton clicks one of the icon buttons of Cinny's left sidebar,
// found by its tooltip, as a user finds them.
async function sidebarButton(t, page, tooltip) {
  const buttons = page.locator('button');
  const tip = page.getByText(tooltip, { exact: true });
  for (let i = 0; i < (await buttons.count()); i++) {
    const b = buttons.nth(i);
    const box = await b.boundingBox();
    if (!box || box.x > 60) continue;
    await b.hover();
    if (await tip.waitFor({ timeout: 1500 }).then(() => true, () => false)) {
      await b.click();
      return;
    }
  }
  throw new Error(`no "${tooltip}" button in the sidebar`);
}

// roomIdByName finds the ID of a joined room by its name, through the API.
async function roomIdByName(t, s, name) {
  const { joined_rooms: rooms } = await t.api(t.myelin.url, s.accessToken, 'GET', '/_matrix/client/v3/joined_rooms');
  for (const id of rooms) {
    try {
      const c = await t.api(t.myelin.url, s.accessToken, 'GET', `/_matrix/client/v3/rooms/${encodeURIComponent(id)}/state/m.room.name/`);
      if (c.name === name) return id;
    } catch {
      // a room without a name
    }
  }
  throw new Error(`no joined room named "${name}"`);
}

export async function run(t) {
  const { step, a, visible, text } = t;
  const st = {};
  const roomName = `Browser test ${t.runId}`;
  const spaceName = `Browser space ${t.runId}`;

  await step('register-user-a', [], async () => {
    st.a = await register(t, a, t.userA);
  });

  await step('create-room', ['register-user-a'], async () => {
    await text(a, 'Create Room', { exact: true }).first().click();
    const name = a.locator('input[name="name"]');
    await visible(name, 'the create-room dialog');
    // Unencrypted, so that server-side search can find its messages.
    const tile = a.locator('.setting-tile', { hasText: 'Enable end-to-end encryption' });
    await tile.locator('button.toggle').click();
    await visible(tile.locator('button.toggle:not(.toggle--active)'), 'encryption toggled off');
    await name.fill(roomName);
    await a.locator('form button[type="submit"]', { hasText: 'Create' }).click();
    await visible(a.locator('[data-slate-editor="true"]'), 'the new room with its composer');
    await visible(text(a, roomName), 'the room name');
    st.roomId = await roomIdByName(t, st.a, roomName);
  });

  await step('send-message', ['create-room'], async () => {
    await sendMessage(t, a, t.msg);
    await visible(text(a, t.msg, { exact: true }), 'the sent message in the timeline');
    const bar = await messageBar(t, a, t.msg);
    // The local echo carries a temporary ID until the server answers.
    st.msgId = await t.poll('the message sent (a server event ID on it)', t.UI_TIMEOUT, async () => {
      const id = await bar.reply.getAttribute('data-event-id');
      return id?.startsWith('$') ? id : null;
    });
  });

  await step('reply-in-thread', ['send-message'], async () => {
    // Cinny has no "start a thread" button: it answers inside a thread when
    // the message replied to is in one. So another client (this script, as
    // the same user) starts the thread, and Cinny replies to its message.
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(st.roomId)}/send/m.room.message/thread-${t.runId}`;
    await t.api(t.myelin.url, st.a.accessToken, 'PUT', path, {
      msgtype: 'm.text',
      body: t.threadFirst,
      'm.relates_to': { rel_type: 'm.thread', event_id: st.msgId, is_falling_back: true, 'm.in_reply_to': { event_id: st.msgId } },
    });
    await visible(text(a, t.threadFirst, { exact: true }), 'the thread\'s first message, sent by another client');
    const bar = await messageBar(t, a, t.threadFirst);
    const marks = a.getByText('Threaded reply');
    const before = await marks.count();
    await bar.reply.click();
    await t.poll('the composer replying in the thread ("Threaded reply" above it)', t.UI_TIMEOUT, async () => (await marks.count()) > before);
    await sendMessage(t, a, t.threadReply);
    await visible(text(a, t.threadReply, { exact: true }), 'the threaded reply in the timeline');
    // Cinny sent it into the thread ...
    const sent = await t.poll('the threaded reply in /messages', t.UI_TIMEOUT, async () => {
      const { chunk } = await t.api(t.myelin.url, st.a.accessToken, 'GET', `/_matrix/client/v3/rooms/${encodeURIComponent(st.roomId)}/messages?dir=b&limit=20`);
      // The body may start with a quote of the message replied to.
      return chunk.find((e) => e.content?.body?.endsWith(t.threadReply));
    });
    const rt = sent.content['m.relates_to'];
    if (rt?.rel_type !== 'm.thread' || rt.event_id !== st.msgId) throw new Error(`Cinny's reply relates as ${JSON.stringify(rt)}, not into the thread`);
    // The server must hold both as the thread's events.
    const rel = await t.poll('the thread on the server', t.UI_TIMEOUT, async () => {
      const r = await t.api(t.myelin.url, st.a.accessToken, 'GET', `/_matrix/client/v1/rooms/${encodeURIComponent(st.roomId)}/relations/${encodeURIComponent(st.msgId)}/m.thread`);
      const bodies = r.chunk.map((e) => e.content?.body);
      // As above, Cinny's body may start with a quote of the message replied to.
      if (!bodies.some((b) => b?.endsWith(t.threadReply))) throw new Error(`/relations m.thread of the root lists ${JSON.stringify(bodies)}`);
      return r;
    });
    if (rel.chunk.length !== 2) throw new Error(`/relations lists ${rel.chunk.length} thread events, want 2`);
  });

  await step('react', ['send-message'], async () => {
    const bar = await messageBar(t, a, t.msg);
    await bar.buttons.first().click();
    const thumbs = a.locator('[data-emoji-shortcode="thumbsup"]').first();
    await visible(thumbs, 'the emoji board');
    await thumbs.click();
    await visible(a.locator('[aria-pressed="true"]', { hasText: '👍' }), 'the 👍 reaction under the message');
  });

  await step('edit-message', ['send-message'], async () => {
    await openMessageMenu(t, a, t.msg);
    await text(a, 'Edit Message', { exact: true }).click();
    const editor = a.locator('[data-slate-editor="true"]').filter({ hasText: t.msg });
    await visible(editor, 'the message editor holding the message');
    await editor.click();
    await a.keyboard.press('Control+A');
    await a.keyboard.type(t.edited);
    await a.keyboard.press('Enter');
    await visible(text(a, t.edited, { exact: true }), 'the edited text in the timeline');
    await visible(text(a, '(edited)'), 'the "(edited)" mark');
    // After a reload Cinny rebuilds the timeline from the server.
    await a.reload();
    await visible(text(a, t.edited, { exact: true }), 'the edited text after a reload');
  });

  await step('search', ['send-message'], async () => {
    await a.goto(`${t.cinny.url}/home/search/?rooms=${encodeURIComponent(st.roomId)}`);
    const input = a.locator('input[name="searchInput"]');
    await visible(input, 'the search page');
    await input.fill('hello');
    await input.press('Enter');
    const results = a.getByText('Results for "hello"');
    const none = a.getByText('No results found for');
    const error = a.getByText(/^MatrixError/);
    await visible(results.or(none).or(error), 'an answer to the search');
    if (await error.isVisible()) throw new Error(`Cinny shows the search's error: ${await error.innerText()}`);
    if (await none.isVisible()) throw new Error('Cinny shows "No results found" for a word of the message');
    await visible(a.getByText(t.edited).or(a.getByText(t.msg)), 'the message among the results');
  });

  await step('create-space', ['register-user-a'], async () => {
    await a.goto(`${t.cinny.url}/home/`);
    await visible(text(a, 'Welcome to Cinny').or(text(a, roomName)), 'the home page');
    await sidebarButton(t, a, 'Create Space');
    const name = a.locator('input[name="name"]');
    await visible(name, 'the create-space dialog');
    await name.fill(spaceName);
    await a.locator('form button[type="submit"]', { hasText: 'Create' }).click();
    await visible(text(a, spaceName), 'the new space');
    await t.poll('the space lobby', t.UI_TIMEOUT, async () => !a.url().includes('/home/'));
    await visible(a.getByText('Add Room').or(a.getByText('Add Existing')).or(a.getByText('Create Room')), 'the space lobby');
  });

  await step('e2ee-direct-chat', ['register-user-a'], async () => {
    const b = await t.launch('B');
    st.b = await register(t, b, t.userB);
    const bobId = st.b.userId;
    // A starts a direct chat with B; Cinny makes it encrypted since B has
    // devices with keys.
    await a.goto(`${t.cinny.url}/direct/`);
    await visible(text(a, 'Direct Message', { exact: true }).or(text(a, 'Create Chat', { exact: true })), 'the direct messages page');
    await text(a, 'Direct Message', { exact: true }).or(text(a, 'Create Chat', { exact: true })).first().click();
    const input = a.locator('.invite-user input');
    await visible(input, 'the direct message dialog');
    await input.fill(bobId);
    await a.locator('.invite-user button[type="submit"]').click();
    const message = a.locator('.invite-user button', { hasText: 'Message' });
    await visible(message, `user ${bobId} found`);
    await message.click();
    // Cinny offers to open the chat once it exists.
    const open = a.locator('.invite-user button', { hasText: 'Open' });
    await visible(open, 'the direct chat created');
    await open.click();
    await visible(a.locator('[data-slate-editor="true"]'), 'the new direct chat');
    await sendMessage(t, a, t.dmA);
    await visible(text(a, t.dmA, { exact: true }), 'A\'s encrypted message on A\'s side');

    // B accepts the invitation and reads A's message, decrypted.
    await b.goto(`${t.cinny.url}/inbox/invites/`);
    const accept = b.getByText('Accept', { exact: true });
    await visible(accept, 'the invitation on B\'s side');
    await accept.first().click();
    // Accepting may leave B on the room's card under Home (Cinny places
    // the room among the direct chats only once m.direct says so): B
    // opens it from the direct chats, as a user would.
    await visible(b.getByText(t.userA).first(), 'the accepted chat');
    await sidebarButton(t, b, 'Direct Messages');
    const chat = b.getByText(t.userA, { exact: true }).first();
    await visible(chat, 'the chat with A among B\'s direct chats');
    await chat.click();
    await visible(b.locator('[data-slate-editor="true"]'), 'the direct chat on B\'s side');
    await visible(text(b, t.dmA, { exact: true }), 'A\'s message decrypted on B\'s side');
    await sendMessage(t, b, t.dmB);
    await visible(text(b, t.dmB, { exact: true }), 'B\'s message on B\'s side');
    await visible(text(a, t.dmB, { exact: true }), 'B\'s message decrypted on A\'s side');
    // And the server only ever held ciphertext.
    const { joined_rooms: rooms } = await t.api(t.myelin.url, st.a.accessToken, 'GET', '/_matrix/client/v3/joined_rooms');
    let encrypted = 0;
    for (const id of rooms) {
      const { chunk } = await t.api(t.myelin.url, st.a.accessToken, 'GET', `/_matrix/client/v3/rooms/${encodeURIComponent(id)}/messages?dir=b&limit=50`);
      for (const e of chunk) {
        const c = JSON.stringify(e.content ?? {});
        if (c.includes(t.dmA) || c.includes(t.dmB)) throw new Error(`the server holds a direct chat message in clear: ${e.type} ${e.event_id}`);
        if (e.type === 'm.room.encrypted' && e.content?.algorithm === 'm.megolm.v1.aes-sha2') encrypted++;
      }
    }
    if (encrypted < 2) throw new Error(`${encrypted} megolm events on the server, want at least 2`);
  });
}
