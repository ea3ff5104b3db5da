# One Myelin homeserver started for sytest.
#
# Each server gets two ports: an HTTPS one for the federation listener
# (its server name is localhost:<that port>, as sytest's federation code
# dials the server name directly) and a plain HTTP one for the client
# listener, which sytest's client uses. The
# configuration is a normal Myelin config file; everything it sets is a
# documented setting (see config.yaml at the repository root).

use strict;
use warnings;

package SyTest::Homeserver::Myelin;
use base qw( SyTest::Homeserver );

use Carp;
use Cwd ();
use JSON ();
use File::Path qw( remove_tree );

use SyTest::SSL qw( ensure_ssl_key create_ssl_cert );

sub _init
{
   my $self = shift;
   my ( $args ) = @_;

   $self->{binary} = delete $args->{binary};
   defined $self->{binary} or croak "Need a myelin binary";

   $self->SUPER::_init( $args );

   my $idx = $self->{hs_index};
   $self->{ports} = {
      https => main::alloc_port( "myelin[$idx].https" ),
      http  => main::alloc_port( "myelin[$idx].http" ),
   };
}

sub server_name
{
   my $self = shift;
   return $self->{bind_host} . ":" . $self->{ports}{https};
}

sub federation_host
{
   my $self = shift;
   return $self->{bind_host};
}

sub federation_port
{
   my $self = shift;
   return $self->{ports}{https};
}

sub public_baseurl
{
   my $self = shift;
   return "http://$self->{bind_host}:$self->{ports}{http}";
}

sub start
{
   my $self = shift;

   my $hs_dir = $self->{hs_dir};
   my $idx = $self->{hs_index};
   my $data_dir = "$hs_dir/data";

   # hs_dir survives between runs that reuse a work directory: start clean.
   remove_tree( $data_dir );
   mkdir $data_dir or die "mkdir $data_dir: $!";

   # A TLS certificate for the HTTPS listener, signed by sytest's test CA
   # (run-tests.pl runs from the sytest tree, where keys/ca.* live).
   my $cert = "$hs_dir/tls.crt";
   my $key = "$hs_dir/tls.key";
   ensure_ssl_key( $key );
   create_ssl_cert( $cert, $key, $self->{bind_host} ) unless -f $cert;

   my %config = (
      server_name => $self->server_name,
      data_dir    => $data_dir,
      client_api  => {
         listen         => "$self->{bind_host}:$self->{ports}{http}",
         public_baseurl => $self->public_baseurl,
      },
      federation_api => {
         listen   => "$self->{bind_host}:$self->{ports}{https}",
         tls_cert => $cert,
         tls_key  => $key,
         # sytest's fake servers present certificates of its test CA.
         trusted_ca_files => [ Cwd::abs_path( "keys/ca.crt" ) ],
         # sytest's fake servers listen on loopback.
         allow_private_addresses => JSON::true,
         # sytest's identity server presents a self-signed certificate.
         insecure_identity_servers => JSON::true,
      },
      media_api => {
         # URL previews fetch from sytest's test server, on loopback: allowed
         # by the preview guard's allow list (the guard itself stays on).
         url_preview => {
            enabled            => JSON::true,
            ip_range_whitelist => [ "127.0.0.0/8", "::1/128" ],
         },
      },
      registration => {
         open          => JSON::true,
         shared_secret => "reg_secret",
         # sytest registers hundreds of users; the work factor only costs time here.
         bcrypt_cost   => 4,
         allow_guests  => JSON::true,
      },
      rate_limits => {
         enabled => JSON::false,
      },
      logging => {
         level => ( $ENV{MYELIN_SYTEST_LOG_LEVEL} // "debug" ),
         file  => "$hs_dir/myelin.log",
      },
   );

   # With MYELIN_SYTEST_POSTGRES_URL (sytest/run sets it for SYTEST_DB=postgres)
   # each server gets a fresh database of its own on that PostgreSQL.
   if( my $admin_url = $ENV{MYELIN_SYTEST_POSTGRES_URL} ) {
      my $db = "myelin_sytest_$idx";
      for my $sql ( "DROP DATABASE IF EXISTS $db WITH (FORCE)", "CREATE DATABASE $db" ) {
         system( "psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", $admin_url, "-c", $sql ) == 0
            or die "psql: $sql failed\n";
      }
      ( my $url = $admin_url ) =~ s{^(postgres(?:ql)?://[^/]*)/[^?]*}{$1/$db}
         or die "MYELIN_SYTEST_POSTGRES_URL is not a postgres:// URL\n";
      $config{database} = { url => $url };
   }

   my $config_path = $self->write_yaml_file( "myelin.yaml" => \%config );

   my $output = $self->{output};
   $output->diag( "Starting Myelin server $idx as " . $self->server_name );

   return $self->_start_process_and_await_connectable(
      command      => [ $self->{binary}, "--config", $config_path ],
      connect_host => $self->{bind_host},
      connect_port => $self->{ports}{https},
      name         => "myelin-$idx",
   )->else( sub {
      die "Unable to start myelin: $_[0]\n";
   })->on_done( sub {
      $output->diag( "Started Myelin server $idx" );
   });
}

1;
