"""Every sentence mailer says to a subscriber or a reader in their list's language (zh, en): the pages of
`mailer serve`, the confirmation mail, the name a reader without one is called, the title of an issue rendered for
no list. One place, so a translation or a new language touches one file.

Words only: no I/O, no rendering (web/pages.py and subscriptions.py put them into pages and mail)."""

from __future__ import annotations

# A reader whose name is not known is greeted as this (mailer send: blank in other languages).
READER = {"zh": "读者", "en": "reader"}

# The masthead and footer of an issue rendered for no list (mailer render / preview without --list) name no list:
# they show where the list's title will go.
NO_LIST_TITLE = {"zh": "（简报名称）", "en": "(newsletter title)"}

# The title `mailer new` gives a workspace's example list.
STARTER_TITLE = {"zh": "简报", "en": "Newsletter"}

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "unsub_heading": "退订「{title}」",
        "unsub_ask": "确认后，{addr} 将不再收到「{title}」的邮件。",
        "unsub_button": "确认退订",
        "unsub_done_heading": "已退订",
        "unsub_done": "{addr} 不会再收到「{title}」的邮件。",
        "unsub_already": "{addr} 已经退订「{title}」，不会再收到它的邮件。",
        "unsub_undo": "退订错了？重新订阅",
        "test_heading": "测试邮件中的链接",
        "test_link": "这是测试邮件里的退订链接，它不对应任何读者，什么也不会改变。"
        "正式发送时，每位读者邮件中的链接只退订其本人。",
        "signup_heading": "订阅「{title}」",
        "signup_intro": "填写邮箱，我们会发一封确认邮件；点击其中的链接后订阅才生效。",
        "email_label": "邮箱",
        "name_label": "称呼（可选）",
        "signup_button": "订阅",
        "signup_bad_email": "请填写有效的邮箱地址。",
        "signup_sent_heading": "请查收确认邮件",
        "signup_sent": "如果 {addr} 可以订阅「{title}」，我们已经给它发了一封确认邮件。请点击邮件中的链接完成订阅。",
        "signup_sent_hint": "几分钟内没有收到？请查看垃圾邮件文件夹。",
        "form_expired_heading": "表单已过期",
        "form_expired": "为了安全，这个表单已失效。请重新打开订阅页面再提交。",
        "back_to_form": "返回订阅页面",
        "limited_heading": "请求过于频繁",
        "limited": "这台设备提交订阅的次数太多了，请过一会儿再试。",
        "confirm_heading": "确认订阅「{title}」",
        "confirm_ask": "点击下面的按钮，{addr} 将开始收到「{title}」。",
        "confirm_button": "确认订阅",
        "confirmed_heading": "订阅成功",
        "confirmed": "{addr} 已订阅「{title}」。欢迎！",
        "expired_heading": "链接已过期",
        "expired": "这个确认链接已超过 7 天。请重新订阅，我们会再发一封确认邮件。",
        "gone_heading": "链接已失效",
        "gone": "这个确认链接已不再适用。如需订阅，请重新填写订阅表单。",
        "prefs_heading": "我的订阅",
        "prefs_intro": "{addr} 的订阅设置。勾选想收到的列表，然后保存。",
        "prefs_lists": "邮件列表",
        "prefs_status_pending": "待确认",
        "prefs_status_bounced": "无法投递，暂停发送",
        "prefs_suppressed": "发往这个地址的邮件被退回或被标为垃圾邮件，我们已停止向它发送；地址修复后请联系我们恢复。",
        "prefs_name": "称呼",
        "prefs_lang": "页面和通知的语言",
        "prefs_lang_default": "跟随各列表",
        "prefs_save": "保存设置",
        "prefs_saved": "已保存。",
        "prefs_leave_heading": "全部退订",
        "prefs_leave_intro": "不想再收到我们的任何邮件？",
        "prefs_leave_button": "退订全部列表",
        "prefs_left": "{addr} 已退订全部列表，不会再收到我们的邮件。",
        "prefs_rotated": "为了安全，保存后此前邮件里的“我的订阅”链接已失效；以后的邮件会带上新链接，"
        "也可以随时在下方索取。",
        "prefs_expired_heading": "链接已过期",
        "prefs_expired": "这个订阅设置链接已过期或已被新链接取代。请填写邮箱，我们会发一封带新链接的邮件。",
        "link_heading": "获取我的订阅设置链接",
        "link_intro": "填写您的邮箱，我们会把管理订阅的链接发给您。",
        "link_button": "发送链接",
        "link_sent_heading": "请查收邮件",
        "link_sent": "如果 {addr} 订阅了我们的邮件，我们已经把订阅设置链接发给它。链接一年内有效。",
        "link_get_new": "获取新的订阅设置链接",
        "link_limited": "这台设备索取链接的次数太多了，请过一会儿再试。",
        "archive_heading": "「{title}」往期",
        "archive_intro": "共 {count} 期，最新的在前。",
        "archive_empty": "还没有往期。",
        "archive_feed": "订阅源（Atom）",
        "archive_signup": "订阅「{title}」",
        "archive_closed": "这个列表的往期没有公开。",
    },
    "en": {
        "unsub_heading": "Unsubscribe from {title}",
        "unsub_ask": "Once you confirm, {addr} will no longer receive {title}.",
        "unsub_button": "Unsubscribe",
        "unsub_done_heading": "You are unsubscribed",
        "unsub_done": "{addr} will no longer receive {title}.",
        "unsub_already": "{addr} is already unsubscribed from {title} and will receive nothing more.",
        "unsub_undo": "Unsubscribed by mistake? Subscribe again",
        "test_heading": "A link from a test message",
        "test_link": "This is the unsubscribe link of a test message: it belongs to no reader and changes nothing. In "
        "the real issue, the link in each reader's message unsubscribes that reader.",
        "signup_heading": "Subscribe to {title}",
        "signup_intro": "Enter your address and we will send you a confirmation mail; your subscription starts "
        "when you click the link in it.",
        "email_label": "Email address",
        "name_label": "Name (optional)",
        "signup_button": "Subscribe",
        "signup_bad_email": "Please enter a valid email address.",
        "signup_sent_heading": "Check your inbox",
        "signup_sent": "If {addr} can subscribe to {title}, a confirmation mail is on its way. Click the link in "
        "it to finish.",
        "signup_sent_hint": "Nothing after a few minutes? Look in your spam folder.",
        "form_expired_heading": "This form has expired",
        "form_expired": "For your safety this form is no longer valid. Please open the sign-up page again.",
        "back_to_form": "Back to the sign-up page",
        "limited_heading": "Too many requests",
        "limited": "Too many sign-ups came from this device. Please try again later.",
        "confirm_heading": "Confirm your subscription to {title}",
        "confirm_ask": "Press the button and {addr} will start receiving {title}.",
        "confirm_button": "Confirm subscription",
        "confirmed_heading": "You are subscribed",
        "confirmed": "{addr} is now subscribed to {title}. Welcome!",
        "expired_heading": "This link has expired",
        "expired": "This confirmation link is more than 7 days old. Please sign up again and we will send a new one.",
        "gone_heading": "This link no longer applies",
        "gone": "This confirmation link is no longer valid. To subscribe, please fill in the sign-up form again.",
        "prefs_heading": "Your subscriptions",
        "prefs_intro": "Settings for {addr}. Tick the lists you want to receive, then save.",
        "prefs_lists": "Mailing lists",
        "prefs_status_pending": "awaiting confirmation",
        "prefs_status_bounced": "undeliverable, paused",
        "prefs_suppressed": "Mail to this address bounced or was reported as spam, so we stopped sending to it; once "
        "the address works again, ask us to resume.",
        "prefs_name": "Your name",
        "prefs_lang": "Language of these pages and our notices",
        "prefs_lang_default": "each list's own",
        "prefs_save": "Save",
        "prefs_saved": "Saved.",
        "prefs_leave_heading": "Unsubscribe from everything",
        "prefs_leave_intro": "Don't want any more mail from us?",
        "prefs_leave_button": "Unsubscribe from all lists",
        "prefs_left": "{addr} is unsubscribed from every list and will receive nothing more from us.",
        "prefs_rotated": "For your safety, the preferences links in earlier mails stopped working when you saved; "
        "the next mail carries a new one, and you can ask for one below at any time.",
        "prefs_expired_heading": "This link has expired",
        "prefs_expired": "This preferences link has expired or was replaced by a newer one. Enter your address and "
        "we will mail you a new link.",
        "link_heading": "Get the link to your subscriptions",
        "link_intro": "Enter your address and we will mail you the link to manage your subscriptions.",
        "link_button": "Send me my link",
        "link_sent_heading": "Check your inbox",
        "link_sent": "If {addr} is on one of our lists, the link to its subscriptions is on its way. It works for a "
        "year.",
        "link_get_new": "Get a new link to your subscriptions",
        "link_limited": "Too many links were asked for from this device. Please try again later.",
        "archive_heading": "{title}: past issues",
        "archive_intro": "{count} issues, newest first.",
        "archive_empty": "No issues yet.",
        "archive_feed": "Feed (Atom)",
        "archive_signup": "Subscribe to {title}",
        "archive_closed": "The past issues of this list are not public.",
    },
}

# Shown when we cannot (or must not) tell which list a request is about: both languages, nothing specific.
BAD_LINK = (
    "链接无效 / Invalid link",
    [
        "这个链接无效或不完整。请确认复制了邮件中的完整链接。",
        "This link is not valid or is incomplete. Please make sure you copied the whole link from the email.",
    ],
)
NO_LIST = ("没有这个列表 / No such list", ["没有找到这个邮件列表。", "There is no mailing list at this address."])
UNAVAILABLE = (
    "暂时无法处理 / Not available right now",
    [
        "服务暂时出了问题，您的请求没有完成。请稍后再试。",
        "Something went wrong on our side and your request was not completed. Please try again later.",
    ],
)


# The confirmation mail's words. The list's title is data: it goes into front-matter values (given to the renderer,
# never parsed as YAML) and the layout's masthead (autoescaped), never into Jinja or Markdown source.
CONFIRM_BODY = {
    "zh": """{{ subscriber.email }} 刚刚申请订阅这份简报。请点击下面的链接确认：

[确认订阅]({{ subscriber.confirm_url }})

如果不是您本人申请，请忽略本邮件：不确认就不会收到任何邮件。链接 7 天内有效。
""",
    "en": """Someone, hopefully you, asked to subscribe {{ subscriber.email }} to this newsletter. Please confirm:

[Confirm my subscription]({{ subscriber.confirm_url }})

If it was not you, ignore this message: nothing will be sent unless you confirm. The link works for 7 days.
""",
}
CONFIRM_META = {
    "zh": {
        "subject": "请确认订阅「{title}」",
        "preheader": "点击邮件中的链接即可完成订阅",
        "why": "您收到这封邮件，是因为有人在「{title}」的订阅页面填写了这个邮箱地址。",
    },
    "en": {
        "subject": "Please confirm your subscription to {title}",
        "preheader": "One click and you are subscribed",
        "why": "You receive this because this address was entered on the sign-up page of {title}.",
    },
}


# The "send me my link" mail. Its link is the reader's own preferences link (a per-recipient placeholder).
LINK_BODY = {
    "zh": """有人（希望是您）在我们的网站上为 {{ subscriber.email }} 索取了订阅设置链接：

[打开我的订阅设置]({{ preferences_url }})

在那里可以选择要收到的列表、修改称呼和语言，或全部退订。链接一年内有效。如果不是您本人索取，请忽略本邮件，什么也不会改变。
""",
    "en": """Someone, hopefully you, asked for the link to the subscriptions of {{ subscriber.email }}:

[Open my subscriptions]({{ preferences_url }})

There you can choose the lists you receive, change your name and language, or leave them all. The link works for a
year. If it was not you, ignore this message: nothing changes.
""",
}
LINK_META = {
    "zh": {
        "subject": "您的订阅设置链接",
        "preheader": "管理您收到的邮件列表",
        "why": "您收到这封邮件，是因为有人在我们的网站上为这个地址索取了订阅设置链接。",
    },
    "en": {
        "subject": "The link to your subscriptions",
        "preheader": "Manage the lists you receive",
        "why": "You receive this because the link to this address's subscriptions was asked for on our site.",
    },
}
