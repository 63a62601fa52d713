/* Generated from fsm_voice.machine.table by `fsm-voice diagram`; do not edit. */
#define MAX_ATTEMPTS 3
#define ST_idle 0
#define ST_connecting 1
#define ST_active 2
#define ST_listening 3
#define ST_speaking 4
#define ST_ice_grace 5
#define ST_restarting 6
#define ST_backoff 7
#define ST_reconnecting 8
#define ST_error 9
#define up (st == ST_active || st == ST_listening || st == ST_speaking)
#define reconnecting (st == ST_restarting || st == ST_backoff || st == ST_reconnecting)
#define anyarmed (armed_connect_timeout || armed_ice_grace_expired || armed_restart_timeout || armed_backoff_expired || armed_session_stable || armed_rollover_due)
byte st = ST_idle;
byte attempts = 0;
bool quick_used = 0;
bool media_up = 0;
bool channel_up = 0;
bool episode = 0;
byte resume = 0;
byte rollover = 0;
bool armed_connect_timeout = 0;
bool armed_ice_grace_expired = 0;
bool armed_restart_timeout = 0;
bool armed_backoff_expired = 0;
bool armed_session_stable = 0;
bool armed_rollover_due = 0;
bool topen = 0;
byte speech = 0;
byte tries = 0;
bool seen_media = 0;
bool seen_channel = 0;
bool quick = 0;
bool due = 0;
bool ev_fatal = 0;
bool ev_final = 0;
bool ev_opened = 0;
bool ev_start = 0;
bool ev_stop = 0;
bool ev_stable = 0;
bool ev_timer = 0;

active proctype lifecycle() {
    do
    :: d_step { st == ST_idle ->
         /* start | begin_session -> connecting */
         tries = 0; quick = 0;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         attempts = 0;
         quick_used = 0;
         episode = 1;
         st = ST_connecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 1;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_error ->
         /* start | begin_session -> connecting */
         tries = 0; quick = 0;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         attempts = 0;
         quick_used = 0;
         episode = 1;
         st = ST_connecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 1;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && (channel_up == 1) && !seen_media ->
         /* transport_connected | session_up -> active */
         seen_media = 1;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !((channel_up == 1)) && !seen_media ->
         /* transport_connected | mark_media_up -> connecting */
         seen_media = 1;
         media_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && (channel_up == 1) && !seen_media ->
         /* transport_connected | session_up -> active */
         seen_media = 1;
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !((channel_up == 1)) && !seen_media ->
         /* transport_connected | mark_media_up -> restarting */
         seen_media = 1;
         media_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && (channel_up == 1) && !seen_media ->
         /* transport_connected | session_up -> active */
         seen_media = 1;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !((channel_up == 1)) && !seen_media ->
         /* transport_connected | mark_media_up -> reconnecting */
         seen_media = 1;
         media_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && (media_up == 1) && !seen_channel ->
         /* channel_open | session_up -> active */
         seen_channel = 1;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !((media_up == 1)) && !seen_channel ->
         /* channel_open | mark_channel_up -> connecting */
         seen_channel = 1;
         channel_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && (media_up == 1) && !seen_channel ->
         /* channel_open | session_up -> active */
         seen_channel = 1;
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !((media_up == 1)) && !seen_channel ->
         /* channel_open | mark_channel_up -> restarting */
         seen_channel = 1;
         channel_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && (media_up == 1) && !seen_channel ->
         /* channel_open | session_up -> active */
         seen_channel = 1;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         assert(!armed_session_stable);
         armed_session_stable = 1;
         due = 0;
         st = ST_active;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !((media_up == 1)) && !seen_channel ->
         /* channel_open | mark_channel_up -> reconnecting */
         seen_channel = 1;
         channel_up = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !((attempts < MAX_ATTEMPTS)) ->
         /* transport_failed | give_up -> error */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* transport_failed | give_up -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* transport_failed | restart -> restarting */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         episode = 1;
         st = ST_restarting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_restart_timeout);
         armed_restart_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* transport_failed | give_up -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* transport_failed | restart -> restarting */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         episode = 1;
         st = ST_restarting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_restart_timeout);
         armed_restart_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* transport_failed | give_up -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* transport_failed | restart -> restarting */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         episode = 1;
         st = ST_restarting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_restart_timeout);
         armed_restart_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* transport_failed | give_up -> error */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* transport_failed | restart -> restarting */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         episode = 1;
         st = ST_restarting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_restart_timeout);
         armed_restart_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !((attempts < MAX_ATTEMPTS)) ->
         /* transport_failed | give_up -> error */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && (attempts < MAX_ATTEMPTS) ->
         /* transport_failed | back_off -> backoff */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !((attempts < MAX_ATTEMPTS)) ->
         /* transport_failed | give_up -> error */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* ice_disconnected | remember_active -> ice_grace */
         resume = 0;
         st = ST_ice_grace;
         assert(!armed_ice_grace_expired);
         armed_ice_grace_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* ice_disconnected | remember_listening -> ice_grace */
         resume = 1;
         st = ST_ice_grace;
         assert(!armed_ice_grace_expired);
         armed_ice_grace_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* ice_disconnected | remember_speaking -> ice_grace */
         resume = 2;
         st = ST_ice_grace;
         assert(!armed_ice_grace_expired);
         armed_ice_grace_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !(quick_used == 1) ->
         /* signaling_failed[transient] | quick_reconnect -> reconnecting */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         quick = 1;
         quick_used = 1;
         st = ST_reconnecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !(!(quick_used == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* signaling_failed[transient] | back_off -> backoff */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && !(!(quick_used == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* signaling_failed[transient] | give_up -> error */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !(quick_used == 1) ->
         /* signaling_failed[transient] | quick_reconnect -> reconnecting */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         quick = 1;
         quick_used = 1;
         st = ST_reconnecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !(!(quick_used == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* signaling_failed[transient] | back_off -> backoff */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && !(!(quick_used == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* signaling_failed[transient] | give_up -> error */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !(quick_used == 1) ->
         /* signaling_failed[transient] | quick_reconnect -> reconnecting */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         quick = 1;
         quick_used = 1;
         st = ST_reconnecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !(!(quick_used == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* signaling_failed[transient] | back_off -> backoff */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && !(!(quick_used == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* signaling_failed[transient] | give_up -> error */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && (attempts < MAX_ATTEMPTS) && armed_connect_timeout ->
         /* connect_timeout | back_off -> backoff */
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_connecting && !((attempts < MAX_ATTEMPTS)) && armed_connect_timeout ->
         /* connect_timeout | give_up -> error */
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_reconnecting && (attempts < MAX_ATTEMPTS) && armed_connect_timeout ->
         /* connect_timeout | back_off -> backoff */
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_reconnecting && !((attempts < MAX_ATTEMPTS)) && armed_connect_timeout ->
         /* connect_timeout | give_up -> error */
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_restarting && (attempts < MAX_ATTEMPTS) && armed_restart_timeout ->
         /* restart_timeout | back_off -> backoff */
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_restarting && !((attempts < MAX_ATTEMPTS)) && armed_restart_timeout ->
         /* restart_timeout | give_up -> error */
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_backoff && armed_backoff_expired ->
         /* backoff_expired | retry_now -> reconnecting */
         armed_backoff_expired = 0;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         tries = tries + 1;
         attempts = attempts + 1;
         st = ST_reconnecting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_connect_timeout);
         armed_connect_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_ice_grace && (episode == 1) && (attempts < MAX_ATTEMPTS) && armed_ice_grace_expired ->
         /* ice_grace_expired | back_off -> backoff */
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_backoff;
         rollover = 0;
         resume = 0;
         assert(!armed_backoff_expired);
         armed_backoff_expired = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) && armed_ice_grace_expired ->
         /* ice_grace_expired | give_up -> error */
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         assert(armed_session_stable);
         armed_session_stable = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && armed_ice_grace_expired ->
         /* ice_grace_expired | restart -> restarting */
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!topen);
         topen = 1;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         episode = 1;
         st = ST_restarting;
         media_up = 0;
         channel_up = 0;
         rollover = 0;
         resume = 0;
         assert(!armed_restart_timeout);
         armed_restart_timeout = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 1;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 1;
       }
    od
}

ltl peer_fails_reaches_error { <> (st == ST_error) }
