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
    :: d_step { st == ST_idle ->
         /* stop | - -> idle */
         tries = 0; quick = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_backoff ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         assert(armed_backoff_expired);
         armed_backoff_expired = 0;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_error ->
         /* stop | shutdown -> idle */
         tries = 0; quick = 0;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 1;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && (channel_up == 1) ->
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
    :: d_step { st == ST_connecting && !((channel_up == 1)) ->
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
    :: d_step { st == ST_restarting && (channel_up == 1) ->
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
    :: d_step { st == ST_restarting && !((channel_up == 1)) ->
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
    :: d_step { st == ST_reconnecting && (channel_up == 1) ->
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
    :: d_step { st == ST_reconnecting && !((channel_up == 1)) ->
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
    :: d_step { st == ST_connecting && (media_up == 1) ->
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
    :: d_step { st == ST_connecting && !((media_up == 1)) ->
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
    :: d_step { st == ST_restarting && (media_up == 1) ->
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
    :: d_step { st == ST_restarting && !((media_up == 1)) ->
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
    :: d_step { st == ST_reconnecting && (media_up == 1) ->
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
    :: d_step { st == ST_reconnecting && !((media_up == 1)) ->
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
    :: d_step { st == ST_connecting ->
         /* signaling_failed[transient, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_restarting ->
         /* signaling_failed[transient, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_reconnecting ->
         /* signaling_failed[transient, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_connecting ->
         /* signaling_failed[fatal] | fail_fatal -> error */
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
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* signaling_failed[fatal] | fail_fatal -> error */
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
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* signaling_failed[fatal] | fail_fatal -> error */
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
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting ->
         /* server_error[transient, code=test_code] | report_nonfatal -> connecting */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* server_error[transient, code=test_code] | report_nonfatal -> active */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* server_error[transient, code=test_code] | report_nonfatal -> listening */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* server_error[transient, code=test_code] | report_nonfatal -> speaking */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* server_error[transient, code=test_code] | report_nonfatal -> ice_grace */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* server_error[transient, code=test_code] | report_nonfatal -> restarting */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* server_error[transient, code=test_code] | report_nonfatal -> reconnecting */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_active && !((episode == 1)) && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[transient, code=session_expired, retry_after=120] | back_off -> backoff */
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
    :: d_step { st == ST_active && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | give_up -> error */
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
    :: d_step { st == ST_active && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* server_error[transient, code=session_expired, retry_after=120] | restart -> restarting */
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
    :: d_step { st == ST_listening && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_listening && !((episode == 1)) && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[transient, code=session_expired, retry_after=120] | back_off -> backoff */
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
    :: d_step { st == ST_listening && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | give_up -> error */
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
    :: d_step { st == ST_listening && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* server_error[transient, code=session_expired, retry_after=120] | restart -> restarting */
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
    :: d_step { st == ST_speaking && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_speaking && !((episode == 1)) && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[transient, code=session_expired, retry_after=120] | back_off -> backoff */
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
    :: d_step { st == ST_speaking && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | give_up -> error */
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
    :: d_step { st == ST_speaking && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* server_error[transient, code=session_expired, retry_after=120] | restart -> restarting */
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
    :: d_step { st == ST_ice_grace && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | retry_after_too_long -> error */
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
    :: d_step { st == ST_ice_grace && !((episode == 1)) && (episode == 1) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[transient, code=session_expired, retry_after=120] | back_off -> backoff */
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
    :: d_step { st == ST_ice_grace && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && (episode == 1) ->
         /* server_error[transient, code=session_expired, retry_after=120] | give_up -> error */
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
    :: d_step { st == ST_ice_grace && !((episode == 1)) && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) ->
         /* server_error[transient, code=session_expired, retry_after=120] | restart -> restarting */
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
    :: d_step { st == ST_active && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         episode = 1;
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
    :: d_step { st == ST_active && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | give_up -> error */
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
    :: d_step { st == ST_listening && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         episode = 1;
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
    :: d_step { st == ST_listening && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | give_up -> error */
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
    :: d_step { st == ST_speaking && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | back_off -> backoff */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         episode = 1;
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
    :: d_step { st == ST_speaking && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | give_up -> error */
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
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && (attempts < MAX_ATTEMPTS) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | back_off -> backoff */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         episode = 1;
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
    :: d_step { st == ST_ice_grace && !((episode == 1) && (attempts < MAX_ATTEMPTS)) && !((episode == 1)) && !((attempts < MAX_ATTEMPTS)) ->
         /* server_error[recoverable, code=test_code, retry_after=1] | give_up -> error */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
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
         /* server_error[recoverable, code=test_code, retry_after=120] | retry_after_too_long -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_listening ->
         /* server_error[recoverable, code=test_code, retry_after=120] | retry_after_too_long -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_speaking ->
         /* server_error[recoverable, code=test_code, retry_after=120] | retry_after_too_long -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_ice_grace ->
         /* server_error[recoverable, code=test_code, retry_after=120] | retry_after_too_long -> error */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
         /* server_error[fatal, code=test_code] | fail_fatal -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* server_error[fatal, code=test_code] | fail_fatal -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* server_error[fatal, code=test_code] | fail_fatal -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* server_error[fatal, code=test_code] | fail_fatal -> error */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 1;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting ->
         /* session_info[expires_in=1800] | arm_rollover -> connecting */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* session_info[expires_in=1800] | arm_rollover -> active */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && (rollover == 2) ->
         /* session_info[expires_in=1800] | keep_pending -> listening */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && !((rollover == 2)) ->
         /* session_info[expires_in=1800] | arm_rollover -> listening */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && (rollover == 2) ->
         /* session_info[expires_in=1800] | keep_pending -> speaking */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && !((rollover == 2)) ->
         /* session_info[expires_in=1800] | arm_rollover -> speaking */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && (rollover == 2) ->
         /* session_info[expires_in=1800] | keep_pending -> ice_grace */
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((rollover == 2)) ->
         /* session_info[expires_in=1800] | arm_rollover -> ice_grace */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* session_info[expires_in=1800] | arm_rollover -> restarting */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* session_info[expires_in=1800] | arm_rollover -> reconnecting */
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         assert(!armed_rollover_due);
         armed_rollover_due = 1;
         rollover = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting && armed_rollover_due ->
         /* rollover_due | drop_rollover -> connecting */
         armed_rollover_due = 0;
         due = 1;
         rollover = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && armed_rollover_due ->
         /* rollover_due | rollover -> restarting */
         armed_rollover_due = 0;
         due = 1;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_listening && armed_rollover_due ->
         /* rollover_due | rollover_pending -> listening */
         armed_rollover_due = 0;
         due = 1;
         rollover = 2;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && armed_rollover_due ->
         /* rollover_due | rollover_pending -> speaking */
         armed_rollover_due = 0;
         due = 1;
         rollover = 2;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && armed_rollover_due ->
         /* rollover_due | rollover_pending -> ice_grace */
         armed_rollover_due = 0;
         due = 1;
         rollover = 2;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting && armed_rollover_due ->
         /* rollover_due | drop_rollover -> restarting */
         armed_rollover_due = 0;
         due = 1;
         rollover = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting && armed_rollover_due ->
         /* rollover_due | drop_rollover -> reconnecting */
         armed_rollover_due = 0;
         due = 1;
         rollover = 0;
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
    :: d_step { st == ST_connecting ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         assert(armed_restart_timeout);
         armed_restart_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* session_closed[code=close_requested] | session_ended -> idle */
         assert(armed_connect_timeout);
         armed_connect_timeout = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_idle;
         attempts = 0;
         quick_used = 0;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_connecting ->
         /* session_closed[code=content] | closed_for_content -> error */
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
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* session_closed[code=content] | closed_for_content -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* session_closed[code=content] | closed_for_content -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* session_closed[code=content] | closed_for_content -> error */
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* session_closed[code=content] | closed_for_content -> error */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
         if :: (rollover == 1) -> assert(armed_rollover_due); armed_rollover_due = 0 :: else -> skip fi;
         st = ST_error;
         media_up = 0;
         channel_up = 0;
         episode = 0;
         rollover = 0;
         resume = 0;
         ev_fatal = 0;
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_restarting ->
         /* session_closed[code=content] | closed_for_content -> error */
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
         ev_final = 1;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_reconnecting ->
         /* session_closed[code=content] | closed_for_content -> error */
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
         ev_final = 1;
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
    :: d_step { st == ST_active ->
         /* speech_started | - -> listening */
         speech = 1;
         st = ST_listening;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* speech_started | - -> listening */
         speech = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* speech_started | - -> listening */
         speech = 1;
         st = ST_listening;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* speech_started | remember_listening -> ice_grace */
         speech = 1;
         resume = 1;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* speech_stopped | - -> active */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && (rollover == 2) ->
         /* speech_stopped | rollover -> restarting */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_listening && !((rollover == 2)) ->
         /* speech_stopped | - -> active */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
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
    :: d_step { st == ST_speaking ->
         /* speech_stopped | - -> speaking */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && (resume == 1) ->
         /* speech_stopped | note_speech_stopped -> ice_grace */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((resume == 1)) ->
         /* speech_stopped | - -> ice_grace */
         if :: speech == 1 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* audio_started | - -> speaking */
         speech = 2;
         st = ST_speaking;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* audio_started | - -> speaking */
         speech = 2;
         st = ST_speaking;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking ->
         /* audio_started | - -> speaking */
         speech = 2;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace ->
         /* audio_started | remember_speaking -> ice_grace */
         speech = 2;
         resume = 2;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active ->
         /* audio_stopped | - -> active */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening ->
         /* audio_stopped | - -> listening */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && (rollover == 2) ->
         /* audio_stopped | rollover -> restarting */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_speaking && !((rollover == 2)) ->
         /* audio_stopped | - -> active */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
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
    :: d_step { st == ST_ice_grace && (resume == 2) ->
         /* audio_stopped | note_audio_stopped -> ice_grace */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((resume == 2)) ->
         /* audio_stopped | - -> ice_grace */
         if :: speech == 2 -> speech = 0 :: else -> skip fi;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_active && armed_session_stable ->
         /* session_stable | episode_ends -> active */
         armed_session_stable = 0;
         tries = 0; quick = 0;
         attempts = 0;
         quick_used = 0;
         episode = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 1;
         ev_timer = 0;
       }
    :: d_step { st == ST_listening && armed_session_stable ->
         /* session_stable | episode_ends -> listening */
         armed_session_stable = 0;
         tries = 0; quick = 0;
         attempts = 0;
         quick_used = 0;
         episode = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 1;
         ev_timer = 0;
       }
    :: d_step { st == ST_speaking && armed_session_stable ->
         /* session_stable | episode_ends -> speaking */
         armed_session_stable = 0;
         tries = 0; quick = 0;
         attempts = 0;
         quick_used = 0;
         episode = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 1;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && armed_session_stable ->
         /* session_stable | episode_ends -> ice_grace */
         armed_session_stable = 0;
         tries = 0; quick = 0;
         attempts = 0;
         quick_used = 0;
         episode = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 1;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && (resume == 1) ->
         /* ice_recovered | resume_listening -> listening */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         st = ST_listening;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((resume == 1)) && (resume == 2) ->
         /* ice_recovered | resume_speaking -> speaking */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         st = ST_speaking;
         resume = 0;
         ev_fatal = 0;
         ev_final = 0;
         ev_opened = 0;
         ev_start = 0;
         ev_stop = 0;
         ev_stable = 0;
         ev_timer = 0;
       }
    :: d_step { st == ST_ice_grace && !((resume == 1)) && !((resume == 2)) && (rollover == 2) ->
         /* ice_recovered | rollover -> restarting */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
         topen = 0;
         speech = 0;
         seen_media = 0;
         seen_channel = 0;
         due = 0;
         if :: (episode == 1) -> assert(armed_session_stable); armed_session_stable = 0 :: else -> skip fi;
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
    :: d_step { st == ST_ice_grace && !((resume == 1)) && !((resume == 2)) && !((rollover == 2)) ->
         /* ice_recovered | resume_active -> active */
         assert(armed_ice_grace_expired);
         armed_ice_grace_expired = 0;
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
    od
}

ltl retry_bound { [] (attempts <= MAX_ATTEMPTS && tries <= MAX_ATTEMPTS) }
ltl no_reconnect_after_fatal { [] (ev_fatal -> ((!ev_opened U ev_start) || [] !ev_opened)) }
ltl reconnecting_ends { (<>[] reconnecting -> []<> ev_timer) -> [] (reconnecting -> <> (up || st == ST_error || st == ST_idle)) }
ltl stop_reaches_idle { [] (ev_stop -> (st == ST_idle && !anyarmed && !topen)) }
ltl idle_has_no_timer { [] ((st == ST_idle || st == ST_error) -> (!anyarmed && !topen)) }
ltl stable_ends_episode { [] (ev_stable -> (attempts == 0 && !quick_used && !episode)) }
ltl final_close_opens_nothing { [] (ev_final -> ((!ev_opened U ev_start) || [] !ev_opened)) }
